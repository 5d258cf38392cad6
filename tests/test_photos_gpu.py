"""The GPU input path, run on the CPU: selection, batched decode, tensor transform.

``torchvision.io.decode_jpeg`` takes ``device="cpu"`` too, so everything except
nvJPEG itself runs here; ``create_loader`` picks the path only on CUDA."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from test_photos_copies import photo
from transferkit.data import ImageDataset, create_loader, create_transform, gpu, load_data, loaders
from transferkit.data.copies import CopyCache, working_side
from transferkit.data.images import open_image
from transferkit.errors import InputError

CONFIG = {
    "input_size": (3, 64, 64),
    "interpolation": "bicubic",
    "mean": (0.5, 0.4, 0.3),
    "std": (0.25, 0.2, 0.3),
    "crop_pct": 0.875,
    "crop_mode": "center",
}
SIDE = working_side(64, 0.875)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(gpu, "_CHOICES", {})


@pytest.fixture
def device_path_wins(monkeypatch):
    """Where a test forces the GPU path on the CPU, the measured choice says so too
    (on a CPU, torchvision's decoder may well lose to Pillow)."""
    won = gpu.DecodeChoice(True, 1000.0, 10.0, 0, 6)
    monkeypatch.setattr(gpu, "measure_decoding", lambda ds, device, workers: won)


def mixed_folder(root):
    """Large photos (with working copies) and small ones (used as they are)."""
    for c in ("a", "b"):
        for i in range(3):
            photo(root / c / f"big{i}.jpg", size=(640, 480), seed=i + 3 * (c == "b"))
        photo(root / c / "small.jpg", size=(200, 150), seed=9 + (c == "b"))
    return load_data(root, val_split=0)


def test_decode_jpegs_matches_pillow(tmp_path):
    copy = io.BytesIO()
    Image.open(photo(tmp_path / "p.jpg")).save(copy, "JPEG", quality=95, subsampling=0)
    (decoded,) = gpu.decode_jpegs([copy.getvalue()], "cpu")
    pillow = torch.from_numpy(np.array(Image.open(io.BytesIO(copy.getvalue())))).permute(2, 0, 1)
    assert decoded.dtype == torch.uint8 and decoded.shape == pillow.shape
    assert (decoded.int() - pillow.int()).abs().max() <= 2


def test_tensor_transform_matches_the_pil_eval_transform(tmp_path):
    img = open_image(photo(tmp_path / "p.jpg", size=(1280, 960)), side=SIDE)
    pil_tf = create_transform(CONFIG, train=False)
    expected = pil_tf(img)
    as_tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    got = gpu.TensorEvalTransform(pil_tf.config)(as_tensor)
    assert got.shape == expected.shape == (3, 64, 64)
    assert (got - expected).abs().mean() < 0.02  # resampling rounding, in std units


def test_the_gpu_path_is_chosen_only_for_cuda_evaluation(tmp_path, monkeypatch):
    data = mixed_folder(tmp_path / "photos")
    evaluation = ImageDataset(data.train, create_transform(CONFIG, train=False))
    training = ImageDataset(data.train, create_transform(CONFIG, train=True))
    gray = ImageDataset(
        data.train, create_transform(dict(CONFIG, input_size=(1, 64, 64)), train=False)
    )
    assert not gpu.gpu_decodable(evaluation, "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "_decoder_works", lambda device: True)
    assert gpu.gpu_decodable(evaluation, "cuda")
    assert not gpu.gpu_decodable(training, "cuda")  # random crops per image: CPU workers
    assert not gpu.gpu_decodable(gray, "cuda")
    assert not gpu.gpu_decodable(ImageDataset(data.train), "cuda")  # no transform
    monkeypatch.setattr(gpu, "_decoder_works", lambda device: False)  # no nvJPEG
    assert not gpu.gpu_decodable(evaluation, "cuda")


def test_gpu_batches_match_the_cpu_loader(tmp_path, monkeypatch, device_path_wins):
    data = mixed_folder(tmp_path / "photos")
    dataset = ImageDataset(data.train, create_transform(CONFIG, train=False))
    cpu_x, cpu_y = next(iter(create_loader(dataset, batch_size=len(dataset))))
    monkeypatch.setattr(loaders, "gpu_decodable", lambda ds, device: True)
    loader = create_loader(dataset, batch_size=len(dataset), device="cpu")
    assert isinstance(loader.dataset, gpu.EncodedDataset)
    datas, tensors, _ = next(
        iter(
            torch.utils.data.DataLoader(
                loader.dataset, batch_size=len(dataset), collate_fn=gpu.collate_encoded
            )
        )
    )
    assert sum(d is not None for d in datas) == 6 and sum(t is not None for t in tensors) == 2
    x, y = next(iter(loader))
    assert torch.equal(y, cpu_y) and x.shape == cpu_x.shape
    assert (x - cpu_x).abs().mean() < 0.02


def test_gpu_batches_read_the_copies_the_scan_made(tmp_path, monkeypatch, device_path_wins):
    data = mixed_folder(tmp_path / "photos")
    dataset = ImageDataset(data.train, create_transform(CONFIG, train=False))
    cache = CopyCache()
    large = [ex for ex in data.train if "big" in ex.path]
    assert all(cache.has(ex.digest, SIDE) for ex in large)
    for ex in large:
        with open(ex.path, "r+b") as f:
            f.truncate(100)
    monkeypatch.setattr(loaders, "gpu_decodable", lambda ds, device: True)
    x, _ = next(iter(create_loader(dataset, batch_size=len(dataset), device="cpu")))
    assert torch.isfinite(x).all()


def test_subsets_from_feature_extraction_take_the_gpu_path(tmp_path, monkeypatch, device_path_wins):
    """Feature extraction hands the loader a Subset (the images without stored
    features): it must still be decoded from the copies' bytes, rows in order."""
    data = mixed_folder(tmp_path / "photos")
    dataset = ImageDataset(data.train, create_transform(CONFIG, train=False))
    picked = torch.utils.data.Subset(torch.utils.data.Subset(dataset, [7, 5, 3, 1, 0]), [0, 2, 4])
    assert gpu.tensor_transform(picked) is not None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "_decoder_works", lambda device: True)
    assert gpu.gpu_decodable(picked, "cuda")
    monkeypatch.setattr(loaders, "gpu_decodable", lambda ds, device: True)
    loader = create_loader(picked, batch_size=8, device="cpu")
    assert isinstance(loader, loaders._GpuDecodeLoader)
    x, y = next(iter(loader))
    expected = torch.stack([dataset[i][0] for i in (7, 3, 0)])
    assert torch.equal(y, torch.tensor([dataset.examples[i].label for i in (7, 3, 0)]))
    assert x.shape == expected.shape and (x - expected).abs().mean() < 0.02


def test_a_failing_gpu_decoder_is_said_once(monkeypatch, caplog):
    def broken(datas, device):
        raise RuntimeError("decode_jpeg: batched decoding is not supported\nmore")

    monkeypatch.setattr(gpu, "decode_jpegs", broken)
    monkeypatch.setattr(gpu, "_DECODE_OK", {})
    with caplog.at_level("WARNING", logger="transferkit.data"):
        assert not gpu._decoder_works(torch.device("cuda:0"))
        assert not gpu._decoder_works(torch.device("cuda:0"))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "decoded on the CPU instead" in said[0]
    assert "batched decoding is not supported" in said[0] and "more" not in said[0]
    assert gpu.decoding_on("cuda:0") is False


def test_both_input_paths_are_timed_on_the_data_sets_own_copies(tmp_path):
    data = mixed_folder(tmp_path / "photos")
    dataset = ImageDataset(data.train, create_transform(CONFIG, train=False))
    choice = gpu.measure_decoding(dataset, "cpu", workers=3)
    assert choice.sample == 6 and choice.workers == 3  # the six large photos' copies
    assert choice.device_images_per_s > 0 and choice.cpu_images_per_s > 0
    assert choice.on_device == (choice.device_images_per_s >= choice.cpu_images_per_s)
    smalls = [ex for ex in data.train if "small" in ex.path]
    only_small = ImageDataset(smalls, create_transform(CONFIG, train=False))
    assert gpu.measure_decoding(only_small, "cpu", workers=3) is None  # nothing to decode


@pytest.mark.parametrize("device_wins", [True, False])
def test_the_measured_faster_path_is_taken_and_said_once(
    tmp_path, monkeypatch, caplog, device_wins
):
    data = mixed_folder(tmp_path / "photos")
    dataset = ImageDataset(data.train, create_transform(CONFIG, train=False))
    measured = []
    choice = gpu.DecodeChoice(device_wins, 900.0 if device_wins else 90.0, 400.0, 2, 6)
    monkeypatch.setattr(
        gpu, "measure_decoding", lambda ds, device, workers: measured.append(1) or choice
    )
    monkeypatch.setattr(loaders, "gpu_decodable", lambda ds, device: True)
    with caplog.at_level("INFO", logger="transferkit.data"):
        first = create_loader(dataset, batch_size=4, device="cpu", workers=2)
        again = create_loader(dataset, batch_size=4, device="cpu", workers=2)
    chosen = loaders._GpuDecodeLoader if device_wins else loaders._Loader
    assert type(first) is chosen and type(again) is chosen
    assert measured == [1]  # once per device, working side and worker count
    said = [r.getMessage() for r in caplog.records if "evaluation images" in r.getMessage()]
    assert len(said) == 1
    where = "decoded on cpu" if device_wins else "decoded by the CPU loader"
    assert where in said[0] and "in 2 loader processes: ~400 images/s" in said[0]


def test_with_no_loader_processes_the_bytes_of_a_batch_are_read_on_threads(tmp_path, monkeypatch):
    data = mixed_folder(tmp_path / "photos")
    dataset = gpu.EncodedDataset(ImageDataset(data.train, create_transform(CONFIG, train=False)))
    one_by_one = [dataset[i] for i in (5, 0, 7)]
    pool = gpu.reading_pool()
    used = []
    monkeypatch.setattr(
        gpu, "reading_pool", lambda: used.append(1) or pool
    )  # the same threads, counted
    batch = dataset.__getitems__([5, 0, 7])
    assert used == [1] and len(batch) == 3
    for (d1, t1, y1), (d2, t2, y2) in zip(batch, one_by_one, strict=True):
        assert d1 == d2 and y1 == y2 and (t1 is None) == (t2 is None)
        assert t1 is None or torch.equal(t1, t2)


@pytest.mark.parametrize(("pin", "chosen"), [("gpu", "_GpuDecodeLoader"), ("cpu", "_Loader")])
def test_the_choice_can_be_fixed_without_measuring(tmp_path, monkeypatch, caplog, pin, chosen):
    data = mixed_folder(tmp_path / "photos")
    dataset = ImageDataset(data.train, create_transform(CONFIG, train=False))
    monkeypatch.setenv("TRANSFERKIT_GPU_DECODE", pin)
    monkeypatch.setattr(gpu, "measure_decoding", lambda *a: pytest.fail("measured"))
    monkeypatch.setattr(loaders, "gpu_decodable", lambda ds, device: True)
    with caplog.at_level("INFO", logger="transferkit.data"):
        loader = create_loader(dataset, batch_size=4, device="cpu")
    assert type(loader).__name__ == chosen
    assert "(set by TRANSFERKIT_GPU_DECODE)" in caplog.text


def test_a_bad_fixed_choice_is_a_one_line_error(tmp_path, monkeypatch):
    data = mixed_folder(tmp_path / "photos")
    dataset = ImageDataset(data.train, create_transform(CONFIG, train=False))
    monkeypatch.setenv("TRANSFERKIT_GPU_DECODE", "nvjpeg")
    with pytest.raises(InputError) as err:
        gpu.choose_decoding(dataset, "cpu", 0)
    assert str(err.value) == "TRANSFERKIT_GPU_DECODE must be auto, gpu or cpu, got 'nvjpeg'"


def test_a_data_set_without_copies_does_not_decide_for_a_later_one(tmp_path, monkeypatch):
    data = mixed_folder(tmp_path / "photos")
    tf = create_transform(CONFIG, train=False)
    smalls = ImageDataset([ex for ex in data.train if "small" in ex.path], tf)
    photos = ImageDataset(data.train, tf)
    assert gpu.choose_decoding(smalls, "cpu", 0) is None
    assert gpu.choose_decoding(photos, "cpu", 0).sample == 6  # measured, not the None


def test_a_device_that_fails_while_measured_leaves_the_cpu_loader(tmp_path, monkeypatch, caplog):
    data = mixed_folder(tmp_path / "photos")
    dataset = ImageDataset(data.train, create_transform(CONFIG, train=False))

    def out_of_memory(datas, device):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\ndetails")

    monkeypatch.setattr(gpu, "decode_jpegs", out_of_memory)
    with caplog.at_level("WARNING", logger="transferkit.data"):
        choice = gpu.choose_decoding(dataset, "cpu", 2)
    assert not choice.on_device
    assert "failed while measuring it (RuntimeError: CUDA out of memory." in caplog.text
    assert "details" not in caplog.text
