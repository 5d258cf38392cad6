"""Photos: large images are decoded once, at the size the model needs, and every path
(scan, loader, cache hit or miss, prediction on the files) sees the same pixels."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.data import (
    ImageDataset,
    ScanOptions,
    check_data,
    create_transform,
    load_data,
    open_image,
    scanning,
)
from transferkit.data import copies as copies_module
from transferkit.data.copies import CopyCache, working_side
from transferkit.data.images import inspect_image
from transferkit.errors import InputError

CONFIG = {
    "input_size": (3, 64, 64),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "crop_pct": 0.875,
    "crop_mode": "center",
}
SIDE = working_side(64, 0.875)  # 336: the smallest working copy


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A cache folder per test: the copies found are the ones this test made."""
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "cache"))


def photo(path, size=(640, 480), seed=0, progressive=False, exif=None):
    """A smooth JPEG with some noise: a small stand-in for a phone photo."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
    arr = np.clip(base + rng.normal(0, 8, (h, w, 3)) + seed * 7, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"exif": exif} if exif is not None else {}
    Image.fromarray(arr).save(path, quality=90, progressive=progressive, **kw)
    return path


def photo_folder(root, n=3):
    for c in ("a", "b"):
        for i in range(n):
            photo(root / c / f"{i}.jpg", seed=i + (10 if c == "b" else 0))
    return root


def tensors(dataset):
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def eval_dataset(examples, **kw):
    return ImageDataset(examples, create_transform(CONFIG, train=False), **kw)


def test_working_side_covers_training_crops_and_the_eval_resize():
    assert working_side(224) == 336 and working_side(64) == 336
    assert working_side(384) == 576
    assert working_side(224, crop_pct=0.6) == 374  # a wide eval resize needs more


def test_the_loader_does_not_need_the_originals_after_load_data(tmp_path):
    root = photo_folder(tmp_path / "photos")
    data = load_data(root, val_split=0)
    before = tensors(eval_dataset(data.train))
    for ex in data.train:  # the originals go bad after the scan...
        with open(ex.path, "r+b") as f:
            f.truncate(100)
    after = tensors(eval_dataset(data.train))  # ...the working copies made by the scan serve
    assert torch.equal(before, after)


def test_check_data_verifies_only_and_load_data_makes_copies(tmp_path):
    root = photo_folder(tmp_path / "photos")
    assert check_data(root).usable
    assert check_data(root, scan=ScanOptions(cache=False)).usable
    cache = CopyCache()
    assert not list(cache.folder.rglob("*.jpg"))
    data = load_data(root, val_split=0)
    assert all(cache.has(ex.digest, SIDE) for ex in data.train)


def test_a_cached_copy_and_a_fresh_one_give_identical_tensors(tmp_path):
    root = photo_folder(tmp_path / "photos")
    data = load_data(root, val_split=0)
    cached = tensors(eval_dataset(data.train))
    fresh = tensors(eval_dataset(data.train, copies=CopyCache(enabled=False)))
    assert torch.equal(cached, fresh)
    # and opening the file as prediction does (no cache, no digest) gives the same
    tf = create_transform(CONFIG, train=False)
    direct = torch.stack([tf(open_image(ex.path, side=SIDE)) for ex in data.train])
    assert torch.equal(cached, direct)


def test_a_damaged_copy_is_rebuilt(tmp_path):
    root = photo_folder(tmp_path / "photos", n=1)
    data = load_data(root, val_split=0)
    good = tensors(eval_dataset(data.train))
    cache = CopyCache()
    first = cache.path(data.train[0].digest, SIDE)
    first.write_bytes(first.read_bytes()[:500])  # short
    second = cache.path(data.train[1].digest, SIDE)
    blob = bytearray(second.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte
    second.write_bytes(bytes(blob))
    assert cache.get(data.train[0].digest, SIDE) is None
    assert cache.get(data.train[1].digest, SIDE) is None
    assert torch.equal(tensors(eval_dataset(data.train)), good)
    assert cache.has(data.train[0].digest, SIDE) and cache.has(data.train[1].digest, SIDE)


def test_an_unwritable_copy_folder_warns_once_and_falls_back(tmp_path, monkeypatch, caplog):
    root = photo_folder(tmp_path / "photos")
    data = load_data(root, val_split=0)
    good = tensors(eval_dataset(data.train, copies=CopyCache(enabled=False)))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setattr(copies_module, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="transferkit.data"):
        got = tensors(eval_dataset(data.train, copies=CopyCache(blocker / "copies")))
        again = tensors(eval_dataset(data.train, copies=CopyCache(blocker / "copies")))
    assert torch.equal(got, good) and torch.equal(again, good)
    warnings = [r.getMessage() for r in caplog.records if "working-copy folder" in r.getMessage()]
    assert len(warnings) == 1 and "cannot be written" in warnings[0]


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_stays_close(tmp_path):
    path = photo(tmp_path / "big.jpg", size=(1280, 960))
    img = open_image(path, side=SIDE)
    assert img.size == (448, 336)
    with Image.open(path) as full:
        reference = full.convert("RGB").resize(img.size, Image.Resampling.BICUBIC)
    diff = np.abs(np.asarray(img, np.float32) - np.asarray(reference, np.float32))
    assert diff.mean() < 2.0  # of 255: draft scale + JPEG 95 copy
    probe, copy = inspect_image(path.read_bytes(), side=SIDE)
    assert probe.ok and (probe.width, probe.height) == (1280, 960)  # the original's size
    assert Image.open(io.BytesIO(copy)).size == (448, 336)


def test_an_exif_rotated_photo_gets_an_upright_copy(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    path = photo(tmp_path / "rotated.jpg", size=(1280, 960), exif=exif.tobytes())
    with Image.open(path) as stored:
        expected = np.asarray(
            stored.convert("RGB").transpose(Image.Transpose.ROTATE_270).resize((336, 448)),
            np.float32,
        )
    img = open_image(path, side=SIDE)
    assert img.size == (336, 448)  # portrait, shorter side = SIDE
    assert np.abs(np.asarray(img, np.float32) - expected).mean() < 2.0


def full_decode_ok(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return True
    except Exception:
        return False


@pytest.mark.parametrize("progressive", [False, True])
def test_reduced_scale_verification_rejects_what_a_full_decode_rejects(tmp_path, progressive):
    data = photo(tmp_path / "p.jpg", size=(640, 480), progressive=progressive).read_bytes()
    variants = {f"cut at {f}": data[: int(len(data) * f)] for f in (0.05, 0.3, 0.6, 0.9, 0.99)}
    variants["last bytes cut"] = data[:-3]
    for at in (0.2, 0.5, 0.8):
        broken = bytearray(data)
        broken[int(len(data) * at) : int(len(data) * at) + 64] = b"\xff\x00" * 32
        variants[f"garbage at {at}"] = bytes(broken)  # libjpeg decodes through it
    huffman = data.index(b"\xff\xc4")
    variants["bad Huffman table"] = data[: huffman + 5] + b"\xff" * 16 + data[huffman + 21 :]
    scan = data.index(b"\xff\xda")
    variants["bad scan header"] = data[: scan + 5] + b"\x77" + data[scan + 6 :]
    for name, variant in variants.items():
        probe = inspect_image(variant)[0]
        assert probe.ok == full_decode_ok(variant), name
        if name.startswith(("cut", "last", "bad")):
            assert not probe.ok and probe.kind == "corrupt", name


def test_prediction_through_a_missing_original_names_the_file(tmp_path):
    with pytest.raises(InputError, match=r"gone\.jpg: file not found"):
        open_image(tmp_path / "gone.jpg", side=SIDE)


def test_a_scan_with_an_unwritable_copy_folder_stops_decoding_for_copies(
    tmp_path, monkeypatch, caplog
):
    root = photo_folder(tmp_path / "photos")
    load_data(root, val_split=0)  # verdicts cached
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(blocker))
    monkeypatch.setattr(copies_module, "_WARNED", set())
    decoded = []
    real = scanning.inspect_image
    monkeypatch.setattr(scanning, "inspect_image", lambda *a: decoded.append(1) or real(*a))
    with caplog.at_level(logging.WARNING, logger="transferkit.data"):
        verdicts = ScanOptions(workers=1, cache_dir=str(tmp_path / "cache" / "scan"))
        data = load_data(root, val_split=0, scan=verdicts)
    assert len(data.train) == 6
    assert len(decoded) == 1  # the first copy that could not be stored; no more
    assert sum("working-copy folder" in r.getMessage() for r in caplog.records) == 1


def _copies_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if "working copies" in r.getMessage()]
    assert len(lines) == 1, lines
    caplog.clear()
    return lines[0]


def test_the_scan_says_what_copies_it_made_and_reused_and_the_cache_command_frees_them(
    tmp_path, caplog, capsys
):
    import json

    from transferkit.cli import main

    root = photo_folder(tmp_path / "photos")
    caplog.set_level(logging.INFO, logger="transferkit.data")
    load_data(root, val_split=0)
    assert ": 6 made now" in _copies_line(caplog)
    load_data(root, val_split=0)
    assert ": 0 made now (0.0 MiB), 6 reused" in _copies_line(caplog)

    assert main(["cache", "--json"]) == 0
    usage = {u["part"]: u for u in json.loads(capsys.readouterr().out)}
    assert usage["copies"]["files"] == 6 and usage["copies"]["bytes"] > 0
    assert main(["cache", "clear", "--part", "copies", "--json"]) == 0
    cleared = json.loads(capsys.readouterr().out)
    assert cleared["removed"] == [{"part": "copies", "files": 6, "bytes": usage["copies"]["bytes"]}]
    assert usage["scan"]["files"] > 0 and (tmp_path / "cache" / "scan").is_dir()  # kept

    load_data(root, val_split=0)  # the verdicts are cached; the copies are made again
    assert ": 6 made now" in _copies_line(caplog)


def test_clearing_an_unknown_part_of_the_cache_is_a_one_line_error(capsys):
    from transferkit.cli import main

    assert main(["cache", "clear", "--part", "weights"]) == 2
    err = capsys.readouterr().err
    assert "'weights'" in err and "features, copies, scan, arrays" in err and err[-1] == "\n"
