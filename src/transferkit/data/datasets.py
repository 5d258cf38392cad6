"""Demo datasets written as PNG class folders: Fashion-MNIST (Debian) and digits (sklearn).

Why write files instead of handing out arrays: the demo then exercises exactly the
path a user's own folder takes (scanning, report, loaders). Selection ranks indices
by a hash of (seed, index), so the same seed writes the same files on any machine.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError, MissingDependencyError
from .sources import METADATA_FILE

FASHION_MNIST_ENV = "TRANSFERKIT_FASHION_MNIST_DIR"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
DATASETS = ("fashion-mnist", "digits")


@dataclass(frozen=True)
class WrittenDataset:
    """What ``write_dataset`` wrote (also saved as ``transferkit-dataset.json``)."""

    name: str
    path: str
    classes: list[str]
    per_class: int
    test: int
    seed: int
    train_files: int
    test_files: int
    source: str


def write_dataset(
    name: str, out: str | os.PathLike, *, per_class: int = 100, test: int = 200, seed: int = 0
) -> WrittenDataset:
    """Write ``per_class`` training PNGs per class and ``test`` test PNGs in total.

    Layout: ``OUT/train/<class>/*.png`` and ``OUT/test/<class>/*.png`` (the test set
    stratified over classes). Re-running with the same arguments into the same folder
    does nothing; any other non-empty ``OUT`` is refused rather than mixed into.

    Args:
        name: "fashion-mnist" (Debian package ``dataset-fashion-mnist``) or "digits"
            (scikit-learn's bundled 8x8 digits).
        out: the folder to create.
        per_class: training images per class.
        test: test images in total (0 for no test split).
        seed: chooses which images; the same seed gives the same files.

    Raises:
        InputError: bad counts or a non-empty ``out``.
        MissingDependencyError: Fashion-MNIST is not installed.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; options: {', '.join(DATASETS)}")
    if per_class < 1 or test < 0:
        raise InputError(f"--per-class must be >= 1 and --test >= 0, got {per_class} and {test}")
    out = Path(out)
    wanted = {"name": name, "per_class": per_class, "test": test, "seed": seed}
    existing = _existing(out, wanted)
    if existing is not None:
        return existing
    train, test_part, classes, source = _select(name, per_class, test, seed)
    info = WrittenDataset(
        name, str(out), classes, per_class, test, seed, len(train.idx), len(test_part.idx), source
    )
    _save(out, info, train, test_part)
    return info


@dataclass(frozen=True)
class _Part:
    """One split to write: the source's images and labels, and the indices chosen."""

    images: np.ndarray
    labels: np.ndarray
    idx: np.ndarray


def _select(name: str, per_class: int, test: int, seed: int) -> tuple[_Part, _Part, list[str], str]:
    """(train, test, class names, where the images came from); the seed picks the images.

    Fashion-MNIST has its own test set; digits has one set, so the test images are
    picked from those not picked for training.
    """
    if name == "fashion-mnist":
        (train_x, train_y), (test_x, test_y), source = _fashion_mnist()
        train = _Part(train_x, train_y, _pick(train_y, per_class, seed, "train"))
        test_part = _Part(test_x, test_y, _pick_total(test_y, test, seed, "test"))
        return train, test_part, FASHION_MNIST_CLASSES, source
    images, labels, source = _digits()
    train_idx = _pick(labels, per_class, seed, "train")
    rest = np.setdiff1d(np.arange(len(labels)), train_idx)
    test_idx = rest[_pick_total(labels[rest], test, seed, "test")]
    classes = [str(i) for i in range(10)]
    return _Part(images, labels, train_idx), _Part(images, labels, test_idx), classes, source


def _save(out: Path, info: WrittenDataset, train: _Part, test: _Part) -> None:
    """Write the PNGs, then the metadata file: its presence means the folder is complete."""
    try:
        _write(out / "train", train, info.classes)
        if len(test.idx):
            _write(out / "test", test, info.classes)
        (out / METADATA_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc.strerror or exc}") from None


def _existing(out: Path, wanted: dict) -> WrittenDataset | None:
    if not out.exists():
        return None
    if not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    marker = out / METADATA_FILE
    if marker.exists():
        try:
            info = json.loads(marker.read_text())
            same = all(info.get(k) == v for k, v in wanted.items())
        except (OSError, ValueError):
            same = False
        if same:
            return WrittenDataset(**info)
        raise InputError(
            f"{out} already holds a different dataset; remove it or choose another folder"
        )
    if any(out.iterdir()):
        raise InputError(f"{out} is not empty; choose a new folder (nothing was written)")
    return None


def _pick(labels: np.ndarray, per_class: int, seed: int, salt: str) -> np.ndarray:
    """``per_class`` indices of every class, chosen by seed."""
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if per_class > len(idx):
            raise InputError(
                f"--per-class {per_class} is more than the {len(idx)} images class {c} has"
            )
        out.append(_ranked(idx, seed, salt)[:per_class])
    return np.sort(np.concatenate(out))


def _pick_total(labels: np.ndarray, total: int, seed: int, salt: str) -> np.ndarray:
    """``total`` indices stratified over classes (the remainder goes to seed-chosen classes)."""
    classes = np.unique(labels)
    base, extra = divmod(total, len(classes))
    lucky = set(_ranked(classes, seed, salt + "-classes")[:extra].tolist())
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        k = base + (c in lucky)
        if k > len(idx):
            raise InputError(
                f"--test {total} needs {k} images of class {c}, which has {len(idx)} left"
            )
        out.append(_ranked(idx, seed, salt)[:k])
    return np.sort(np.concatenate(out)) if out else np.array([], dtype=int)


def _ranked(values: np.ndarray, seed: int, salt: str) -> np.ndarray:
    keys = [hashlib.sha1(f"{seed}:{salt}:{int(v)}".encode()).digest() for v in values]
    return values[np.argsort(np.array(keys, dtype="S20"), kind="stable")]


def _write(folder: Path, part: _Part, classes: list[str]) -> None:
    """One PNG per index, named by its index in the source file (stable across runs)."""
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in part.idx:
        image = Image.fromarray(part.images[i])
        image.save(folder / classes[int(part.labels[i])] / f"{int(i):05d}.png")


def _fashion_mnist():
    folder = Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    files = {
        k: folder / f"{k}-ubyte.gz"
        for k in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    }
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise MissingDependencyError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}); install the "
            f"Debian package dataset-fashion-mnist (make sysdeps, or apt-get install "
            f"dataset-fashion-mnist), or set {FASHION_MNIST_ENV} to a folder holding the files"
        )
    train = (_idx(files["train-images-idx3"]), _idx(files["train-labels-idx1"]))
    test = (_idx(files["t10k-images-idx3"]), _idx(files["t10k-labels-idx1"]))
    return train, test, str(folder)


def _idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: magic, dims, then raw uint8 data)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, ValueError, EOFError, struct.error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 intensities; scale to 0..255, black digits become white-on-black like MNIST.
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64), "sklearn.datasets.load_digits"
