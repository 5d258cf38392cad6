"""Preprocessing from the backbone's own data config, augmentation, and the loader."""

from __future__ import annotations

import json
import os
import pickle
import threading

import pytest
import torch
from data_builders import good_images, noise

from transferkit.data import (
    AugmentConfig,
    ImageDataset,
    create_loader,
    create_transform,
    default_workers,
    load_data,
)
from transferkit.errors import InputError

CONFIG = {
    "input_size": (3, 16, 16),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def test_eval_transform_follows_the_config():
    tf = create_transform(CONFIG, train=False)
    img = noise(size=(30, 20))
    x = tf(img)
    assert x.shape == (3, 16, 16)
    assert torch.equal(x, tf(img))  # deterministic
    assert tf.config["mean"] == [0.485, 0.456, 0.406] and tf.config["train"] is False
    json.dumps(tf.config)


def test_normalisation_uses_the_configs_mean_and_std():
    tf = create_transform(dict(CONFIG, mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0), train=False)
    x = tf(noise(size=(16, 16)).point(lambda v: 255))  # all white
    assert torch.allclose(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25


def test_image_size_override_and_crop_modes():
    for mode in ("center", "squash", "border"):
        tf = create_transform(dict(CONFIG, crop_mode=mode), train=False, image_size=12)
        assert tf(noise(size=(40, 10))).shape == (3, 12, 12), mode


def test_training_augmentation_is_random_and_can_be_turned_off():
    img = noise(size=(32, 32))
    tf = create_transform(CONFIG, train=True)
    torch.manual_seed(0)
    a, b = tf(img), tf(img)
    assert a.shape == (3, 16, 16) and not torch.equal(a, b)
    off = create_transform(CONFIG, train=True, augment=AugmentConfig(enabled=False))
    assert torch.equal(off(img), create_transform(CONFIG, train=False)(img))
    assert off.config["augment"] is None
    plain = create_transform(
        CONFIG, train=True, augment=AugmentConfig(hflip=False, color_jitter=0.0)
    )
    assert "ColorJitter" not in repr(plain) and "Flip" not in repr(plain)


def test_single_channel_backbone_gets_one_channel():
    tf = create_transform(dict(CONFIG, input_size=(1, 16, 16)), train=True)
    assert tf(noise(size=(20, 20))).shape == (1, 16, 16)  # RGB in, L out
    assert len(tf.config["mean"]) == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"input_size": (4, 16, 16)}, "1 or 3 channels"),
        ({"interpolation": "sinc"}, "unknown interpolation"),
        ({"crop_mode": "zoom"}, "unknown crop_mode"),
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"mean": (0.5, 0.5)}, "mean has 2 values"),
    ],
)
def test_bad_configs_are_input_errors(bad, message):
    with pytest.raises(InputError, match=message):
        create_transform(dict(CONFIG, **bad), train=False)


def _dataset(tmp_path, n=6):
    good_images(tmp_path / "a", n, seed=1)
    good_images(tmp_path / "b", n, seed=2)
    data = load_data(tmp_path, val_split=0)
    return ImageDataset(data.train, create_transform(CONFIG, train=False))


def test_loader_batches_and_is_reproducible(tmp_path):
    ds = _dataset(tmp_path)
    loader = create_loader(ds, batch_size=5, shuffle=True, seed=1, workers=0)
    xs, ys = next(iter(loader))
    assert xs.shape == (5, 3, 16, 16) and ys.dtype == torch.int64

    def order(seed):
        return [
            y.tolist()
            for _, y in create_loader(ds, batch_size=5, shuffle=True, seed=seed, workers=0)
        ]

    assert order(1) == order(1) != order(2)


def test_loader_with_workers_and_picklable_dataset(tmp_path):
    ds = _dataset(tmp_path)
    pickle.loads(pickle.dumps(ds))  # spawn/forkserver workers need this
    loader = create_loader(ds, batch_size=4, workers=1)
    assert loader.persistent_workers and not loader.pin_memory
    assert sum(len(y) for _, y in loader) == 12


def test_default_workers(monkeypatch):
    assert default_workers(10, batch_size=64) == 0
    assert 1 <= default_workers(1000, batch_size=64, device="cuda") <= 8
    # on a CPU device the model's threads already use every core
    assert default_workers(1000, batch_size=64, device="cpu") == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_workers(1000, batch_size=64, device="cuda") == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four torchrun processes share 16 cores
    assert default_workers(1000, batch_size=64, device="cuda") == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_workers(1000, batch_size=64, device="cuda") == 1  # 2 cores, 4 processes


def test_numpy_normalisation_matches_torchvision():
    from torchvision import transforms as T

    cfg = dict(CONFIG, crop_pct=1.0)
    img = noise(size=(16, 16))
    expected = T.Normalize(cfg["mean"], cfg["std"])(T.ToTensor()(img))
    assert torch.allclose(create_transform(cfg, train=False)(img), expected, atol=1e-5)


@pytest.mark.parametrize("workers", [0, 1])
def test_file_broken_after_the_scan_is_a_one_line_error(tmp_path, workers):
    ds = _dataset(tmp_path)
    broken = ds.examples[3].path
    with open(broken, "r+b") as f:
        f.truncate(30)
    loader = create_loader(ds, batch_size=4, workers=workers)
    with pytest.raises(InputError) as e:
        for _ in loader:
            pass
    assert "\n" not in str(e.value) and broken in str(e.value)
    if loader._iterator is not None:  # stop the worker now, not when garbage collected
        loader._iterator._shutdown_workers()


def _reading_threads(ds, monkeypatch) -> set[str]:
    names: set[str] = set()
    read = type(ds).__getitem__

    def recording(self, index):
        names.add(threading.current_thread().name)
        return read(self, index)

    monkeypatch.setattr(type(ds), "__getitem__", recording)
    return names


def test_an_evaluation_batch_is_read_on_several_threads_in_order(tmp_path, monkeypatch):
    ds = _dataset(tmp_path)
    alone = [ds[i] for i in range(len(ds))]
    names = _reading_threads(ds, monkeypatch)
    xs, ys = next(iter(create_loader(ds, batch_size=len(ds), workers=0)))
    assert any(n.startswith("transferkit-read") for n in names)
    assert ys.tolist() == [y for _, y in alone]
    assert torch.equal(xs, torch.stack([x for x, _ in alone]))


def test_an_augmenting_batch_is_read_on_one_thread_so_a_seed_repeats(tmp_path, monkeypatch):
    ds = _dataset(tmp_path)
    ds.transform = create_transform(CONFIG, train=True)
    names = _reading_threads(ds, monkeypatch)
    torch.manual_seed(0)
    first, _ = next(iter(create_loader(ds, batch_size=len(ds), workers=0)))
    torch.manual_seed(0)
    again, _ = next(iter(create_loader(ds, batch_size=len(ds), workers=0)))
    assert names == {threading.current_thread().name}
    assert torch.equal(first, again)
