"""The compute settings on a CPU: float32 eager in NHWC by default, bf16 autocast and
torch.compile when asked, and the flags that choose them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import FAST_FIT, TinyNet
from transferkit import InputError
from transferkit.compute import Compute, create_compute, resolve_device, resolve_precision
from transferkit.estimator import TransferClassifier
from transferkit.features import model_key


def test_cpu_default_is_float32_eager_in_nhwc():
    # NHWC because oneDNN's convolutions are faster in it (compute.create_compute)
    c = create_compute(torch.device("cpu"), "auto", False)
    assert c == Compute(torch.device("cpu"), "fp32", channels_last=True, compile=False)
    x = torch.ones(2, 3, 4, 4)
    assert c.to_device(x).is_contiguous(memory_format=torch.channels_last)
    assert c.to_device(torch.ones(2, 3)).is_contiguous()  # only image batches
    with c.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_precision_and_device_choices():
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(InputError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="precision"):
        TransferClassifier(TinyNet(), precision="fp16").to_config()


def test_channels_last_model_and_batches_still_save(tmp_path):
    from transferkit.atomic import save_tensors

    c = Compute(torch.device("cpu"), channels_last=True)
    net = c.prepare(TinyNet())
    assert net.stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = c.to_device(torch.rand(2, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert c.to_device(torch.rand(2, 3)).is_contiguous()
    save_tensors(tmp_path / "w.safetensors", net.state_dict())
    back = load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(back["stem.weight"], net.stem.weight)


def test_bf16_precision_keys_the_feature_cache_apart():
    net = TinyNet()
    from transferkit.backbones import create_backbone

    bb = create_backbone(net, cut="blocks.2")
    fp32 = model_key(bb, bb.data_config, 16, "avg")
    assert model_key(bb, bb.data_config, 16, "avg", "fp32") == fp32  # old caches stay valid
    assert model_key(bb, bb.data_config, 16, "avg", "bf16") != fp32


FAST = {**FAST_FIT, "head_epochs": 3, "fine_tune_epochs": 1, "cut": "blocks.2"}


def test_bf16_autocasts_extraction_and_fine_tuning_on_cpu(tmp_path, data):
    torch.manual_seed(0)
    net = TinyNet()
    seen = []
    net.stem.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype))
    )
    clf = TransferClassifier(
        net, "fine-tune", precision="bf16", cache_dir=str(tmp_path / "c"), **FAST
    ).fit(data)
    during_fit = seen[1:]  # the first call is the backbone's shape trace
    assert during_fit and all(on and dtype == torch.bfloat16 for on, dtype in during_fit)
    assert all(p.dtype == torch.float32 for p in clf.model_.parameters())
    assert np.isfinite(clf.metrics_["val_loss"])


def test_compile_flag_reaches_extraction_and_fine_tuning(tmp_path, data, monkeypatch):
    compiled = []

    def fake_compile(fn, *args, **kwargs):  # real compilation takes a minute on CPU
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.manual_seed(0)
    TransferClassifier(
        TinyNet(), "fine-tune", compile=True, cache_dir=str(tmp_path / "c"), **FAST
    ).fit(data)
    names = [getattr(fn, "__name__", type(fn).__name__) for fn in compiled]
    assert "forward_features" in names and "TransferModel" in names
    compiled.clear()
    TransferClassifier(TinyNet(), "fine-tune", cache_dir=str(tmp_path / "d"), **FAST).fit(data)
    assert compiled == []  # off by default


def test_fit_flags_for_the_gpu_path():
    from transferkit.cli import build_parser, fit_config_from_args

    parse = build_parser().parse_args
    cfg = fit_config_from_args(
        parse(["fit", "d", "--out", "r", "--precision", "bf16", "--compile"])
    )
    assert (cfg.precision, cfg.compile) == ("bf16", True)
    cfg = fit_config_from_args(parse(["fit", "d", "--out", "r"]))
    assert (cfg.precision, cfg.compile) == ("auto", False)
