"""A fit end to end: the frozen phase leaves the base untouched, fine-tuning changes
only the unfrozen blocks, the feature cache hits and heals, runs reload
bit-identically, an interrupted run resumes."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import FAST_FIT, TinyNet
from transferkit import InputError
from transferkit.estimator import TransferClassifier
from transferkit.training import Callback, EpochEndHook, TrainingInterrupted

FAST = FAST_FIT


def _tiny(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


def _clf(tmp_path, net=None, strategy="feature-extract", **kw):
    params = {**FAST, "cache_dir": str(tmp_path / "cache"), "cut": "blocks.2", **kw}
    return TransferClassifier(net if net is not None else _tiny(), strategy, **params)


def test_feature_extract_leaves_base_weights_and_bn_stats_bit_identical(tmp_path, data):
    net = _tiny()
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("fc")}
    clf = _clf(tmp_path, net).fit(data)
    after = clf.model_.backbone.model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert clf.metrics_["phases"][0]["name"] == "head"
    assert clf.metrics_["val_accuracy"] >= 0.5


def _count_extractions(net):
    calls = {"n": 0}

    def hook(_m, _i):
        if torch.is_inference_mode_enabled():  # extraction, not the backbone's shape trace
            calls["n"] += 1

    net.stem.register_forward_pre_hook(hook)
    return calls


def test_second_fit_runs_the_backbone_zero_times(tmp_path, data):
    first, second = _tiny(), _tiny()
    c1, c2 = _count_extractions(first), _count_extractions(second)
    a = _clf(tmp_path, first).fit(data)
    # 18 images and their 18 mirror images (small data: views are candidates too)
    assert c1["n"] > 0 and a.metrics_["feature_cache"]["extracted"] == 36
    b = _clf(tmp_path, second).fit(data)
    assert c2["n"] == 0
    assert b.metrics_["feature_cache"] == {"hits": 36, "extracted": 0, "rebuilt_shards": 0}
    assert a.metrics_["val_accuracy"] == b.metrics_["val_accuracy"]  # same seed, same result


def test_same_seed_gives_same_metrics(tmp_path, data):
    a = _clf(tmp_path / "a").fit(data)
    b = _clf(tmp_path / "b").fit(data)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history_]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history_]


def test_corrupted_cache_shard_is_rebuilt_not_used(tmp_path, data):
    a = _clf(tmp_path).fit(data)
    shards = list((tmp_path / "cache").rglob("*.npy"))
    assert shards
    raw = bytearray(shards[0].read_bytes())
    raw[-8:] = b"\xff" * 8  # silently wrong features if it were used
    shards[0].write_bytes(bytes(raw))
    b = _clf(tmp_path).fit(data)
    assert b.metrics_["feature_cache"]["rebuilt_shards"] == 1
    assert b.metrics_["feature_cache"]["extracted"] > 0
    assert a.metrics_["val_accuracy"] == b.metrics_["val_accuracy"]


class _AfterFirstFineTuneEpoch(Callback):
    """Looks at the model being fine-tuned after its first epoch."""

    def __init__(self, look):
        self.look, self.seen = look, {}

    def on_epoch_end(self, state):
        if state.name == "fine-tune" and state.epoch == 1:
            self.look(state.model.backbone.model, self.seen)


def test_fine_tune_top1_changes_only_the_last_block(tmp_path, data):
    net = _tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def look(module, seen):
        seen["trainable"] = sorted(
            {
                n.split(".")[1] if n.startswith("blocks") else n.split(".")[0]
                for n, p in module.named_parameters()
                if p.requires_grad
            }
        )
        seen["state"] = {k: v.clone() for k, v in module.state_dict().items()}

    probe = _AfterFirstFineTuneEpoch(look)
    _clf(tmp_path, net, "fine-tune", unfreeze="top:1", fine_tune_epochs=1).fit(
        data, callbacks=[probe]
    )
    assert probe.seen["trainable"] == ["2"]  # exactly blocks.2
    state = probe.seen["state"]
    for k, v in before.items():
        if k.startswith("fc"):
            continue  # pruned: runs after the cut
        changed = not torch.equal(state[k], v)
        if k.startswith("blocks.2.") and "running" not in k and "num_batches" not in k:
            assert changed, f"{k} should have trained"
        else:
            assert not changed, f"{k} should be bit-identical (frozen block or BN statistics)"


def test_bn_train_policy_updates_statistics_in_unfrozen_blocks(tmp_path, data):
    net = _tiny()
    before = net.blocks[2][1].running_mean.clone()

    def look(module, seen):
        seen["rm"] = module.blocks[2][1].running_mean.clone()

    probe = _AfterFirstFineTuneEpoch(look)
    _clf(tmp_path, net, "fine-tune", unfreeze="top:1", bn="train", fine_tune_epochs=1).fit(
        data, callbacks=[probe]
    )
    assert not torch.equal(probe.seen["rm"], before)


def test_the_module_given_as_backbone_is_left_as_it_was(tmp_path, data):
    """Cutting prunes and freezing marks the fitted copy, never the user's module."""
    net = _tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clf = _clf(tmp_path, net, "fine-tune", unfreeze="top:1", fine_tune_epochs=1).fit(data)
    assert clf.model_.backbone.model is not net
    assert isinstance(net.fc, torch.nn.Linear)  # not pruned to Identity
    assert all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_run_directory_contents(tmp_path, data):
    from transferkit.cli import main

    run = tmp_path / "run"
    rc = main(
        [
            "fit",
            str(data),
            "--out",
            str(run),
            "--backbone",
            "test_resnet",
            "--weights",
            "none",
            "--image-size",
            "16",
            "--head-epochs",
            "10",
            "--lr",
            "0.01",
            "--fine-tune-lr",
            "0.001",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    for name in (
        "config.json",
        "model.safetensors",
        "metrics.json",
        "history.csv",
        "data_report.json",
        "train.log",
        "predictions.csv",
        "report.html",
    ):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert {"strategy", "backbone", "val_accuracy", "phases", "seconds_total"} <= set(m)
    assert {"epochs_run", "best_epoch", "seconds"} <= set(m["phases"][0])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["classes"] == ["blue", "green", "red"]
    assert cfg["backbone"]["cut"] == m["decision"]["cut"]  # the cut the advisor chose
    assert not (run / "checkpoint").exists()
    assert "head" in (run / "train.log").read_text()


def test_resume_after_interrupt_finishes_the_run(tmp_path, data):
    run = tmp_path / "run"

    def interrupt(phase, epoch):
        if phase == "fine-tune" and epoch == 1:
            raise KeyboardInterrupt

    clf = _clf(tmp_path, _tiny(), "fine-tune")
    with pytest.raises(TrainingInterrupted, match="--resume"):
        clf.fit(data, run_dir=run, callbacks=[EpochEndHook(interrupt)])
    assert (run / "checkpoint" / "fine-tune.json").is_file()
    assert not (run / "metrics.json").exists()
    resumed = TransferClassifier(_tiny(), "fine-tune").fit(data, run_dir=run, resume=True)
    phases = resumed.metrics_["phases"]
    assert [p["name"] for p in phases] == ["head", "fine-tune"]
    assert phases[1]["epochs_run"] == 2
    assert [r["phase"] for r in resumed.history_].count("fine-tune") == 2
    assert (run / "metrics.json").is_file() and not (run / "checkpoint").exists()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, data):
    with pytest.raises(InputError, match="nothing to resume"):
        TransferClassifier("test_resnet").fit(data, run_dir=tmp_path / "none", resume=True)


def test_fine_tune_lr_must_be_gentle():
    from transferkit.config import FitConfig

    with pytest.raises(InputError, match="10-100x below"):
        FitConfig(lr=1e-3, fine_tune_lr=1e-3).validate()
    # a feature extractor never fine-tunes: its head LR is free
    FitConfig(strategy="feature-extract", lr=1e-4, fine_tune_lr=1e-4).validate()


def test_fine_tuning_builds_its_loaders_once_per_phase(tmp_path, data, monkeypatch):
    """Loader worker processes must start once per phase, not once per epoch."""
    from transferkit.strategies import fine_tune

    built = []
    real = fine_tune.make_loader

    def counting(inputs, dataset, **kw):
        built.append(kw.get("shuffle"))
        return real(inputs, dataset, **kw)

    monkeypatch.setattr(fine_tune, "make_loader", counting)
    clf = TransferClassifier(
        "test_resnet",
        "fine-tune",
        weights="none",
        **{**FAST, "fine_tune_epochs": 3, "fine_tune_patience": 3},
        cache_dir=str(tmp_path),
    )
    clf.fit(data)
    assert clf.metrics_["phases"][1]["epochs_run"] == 3
    assert built.count(True) == 1  # the training loader


def test_a_registered_strategy_is_a_setting_like_the_built_in_ones(tmp_path, data):
    from transferkit.strategies import STRATEGIES, feature_extract, register_strategy

    ran = []

    def mine(inputs):
        ran.append(inputs.config.strategy)
        return feature_extract.run(inputs)

    register_strategy("mine", mine)
    try:
        clf = _clf(tmp_path, strategy="mine").fit(data)
    finally:
        del STRATEGIES["mine"]
    assert ran == ["mine"] and clf.metrics_["strategy"] == "mine"
    with pytest.raises(InputError, match="strategy 'mine' is not one of"):
        _clf(tmp_path, strategy="mine").fit(data)


def test_a_setting_the_backbone_forbids_fails_before_the_data_are_scanned(
    tmp_path, data, monkeypatch
):
    import transferkit.fitting as fitting

    def no_scan(*args, **kwargs):
        raise AssertionError("the data were scanned before the settings were checked")

    monkeypatch.setattr(fitting, "_load_data", no_scan)
    clf = _clf(tmp_path, _tiny(), "fine-tune", unfreeze="top:99")
    with pytest.raises(InputError, match=r"--unfreeze top:99: .* has 4 blocks"):
        clf.fit(data, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
