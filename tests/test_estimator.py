"""TransferClassifier, the scikit-learn-style shell: explicit settings that
``clone`` can copy, learned attributes after ``fit``, one prediction path shared with
``transferkit predict``, and runs that reload bit for bit."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from helpers import FAST_FIT, TinyNet
from transferkit import InputError
from transferkit.config import FitConfig
from transferkit.estimator import TransferClassifier
from transferkit.heads import HeadConfig
from transferkit.training import EpochEndHook

FAST = FAST_FIT


def test_every_setting_is_an_explicit_keyword_with_fitconfigs_default():
    """One keyword per FitConfig field, with its default, plus ``verbose``, which is
    about showing the fit, not the fit."""
    params = dict(inspect.signature(TransferClassifier.__init__).parameters)
    fields = {f.name for f in dataclasses.fields(FitConfig)}
    assert set(params) - fields == {"self", "verbose"} and fields <= set(params)
    defaults = FitConfig()
    for name, p in params.items():
        if name in ("self", "head", "verbose"):
            continue
        assert p.default == getattr(defaults, name), name
    assert params["verbose"].default is True and params["class_weight"].default is None
    assert params["head"].default is None and defaults.head == HeadConfig()
    assert "fine_tune_lr" in (TransferClassifier.__init__.__doc__ or "") + (
        TransferClassifier.__doc__ or ""
    )


def test_get_params_set_params_and_sklearn_clone():
    from sklearn.base import clone

    clf = TransferClassifier("test_resnet", "fine-tune", lr=0.01, fine_tune_lr=0.0005)
    params = clf.get_params()
    assert params["backbone"] == "test_resnet" and params["lr"] == 0.01
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == params
    assert clf.set_params(head_epochs=3) is clf and clf.head_epochs == 3
    with pytest.raises(InputError, match="unknown parameter 'epoch'"):
        clf.set_params(epoch=3)
    assert "lr=0.01" in repr(clf) and "head_epochs=3" in repr(clf)
    quiet = clone(TransferClassifier(verbose=False))
    assert quiet.verbose is False and quiet.to_config() == TransferClassifier().to_config()


def test_a_misspelt_setting_names_the_close_ones():
    with pytest.raises(TypeError, match="unexpected keyword argument 'lrr'; did you mean 'lr'"):
        TransferClassifier(lrr=1)
    with pytest.raises(
        InputError, match="unknown parameter 'lrr' for TransferClassifier; did you mean 'lr'"
    ):
        TransferClassifier().set_params(lrr=1)
    with pytest.raises(InputError, match="did you mean 'head_epochs' or 'fine_tune_epochs'"):
        TransferClassifier().set_params(epoch=1)
    with pytest.raises(TypeError, match="'fine_tune_lr'"):
        TransferClassifier("test_resnet", "fine-tune", finetune_lr=1e-4)


def test_epochs_still_works_as_the_old_name_of_head_epochs():
    with pytest.warns(FutureWarning, match="epochs= is now head_epochs="):
        clf = TransferClassifier(epochs=3)
    assert clf.head_epochs == 3 and clf.to_config().head_epochs == 3
    with pytest.warns(FutureWarning):
        assert clf.set_params(epochs=4).head_epochs == 4


def test_clone_of_a_module_backbone_is_an_independent_copy():
    from sklearn.base import clone

    net = TinyNet()
    copy = clone(TransferClassifier(net))
    assert copy.backbone is not net
    assert all(
        torch.equal(a, b) for a, b in zip(copy.backbone.parameters(), net.parameters(), strict=True)
    )


def test_settings_are_checked_when_fitting_with_the_option_named(data):
    with pytest.raises(InputError, match="--bn 'sometimes'"):
        TransferClassifier("test_resnet", bn="sometimes").fit(data)
    with pytest.raises(InputError, match="10-100x below"):
        TransferClassifier("test_resnet", lr=1e-3, fine_tune_lr=1e-3).fit(data)


def test_unfitted_estimator_says_so():
    with pytest.raises(InputError, match="not fitted yet"):
        TransferClassifier().predict(["x.png"])


def test_fit_returns_self_with_learned_attributes(data, tmp_path):
    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        cut="layer2",
        cache_dir=str(tmp_path),
        **FAST,
    )
    assert clf.fit(data) is clf
    assert clf.classes_ == ["blue", "green", "red"]
    assert clf.config_.strategy == "feature-extract" and clf.config_.cut == "layer2"
    assert clf.history_ and clf.history_[0]["phase"] == "head"
    assert {"val_accuracy", "phases", "seconds_total"} <= set(clf.metrics_)
    assert clf.model_.backbone.cut == "layer2"


def test_fit_on_images_and_labels_and_score(tmp_path):
    rng = np.random.default_rng(0)
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220)}
    images, labels = [], []
    for name, colour in colours.items():
        for _ in range(8):
            noise = rng.normal(0, 20, (16, 16, 3))
            images.append((np.array(colour) + noise).clip(0, 255).astype("uint8"))
            labels.append(name)
    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        cut="layer1",
        cache_dir=str(tmp_path),
        **FAST,
    ).fit(images, labels)
    assert clf.classes_ == ["blue", "red"]
    assert clf.predict(images[:2]) == ["red", "red"]
    assert clf.score(images, labels) >= 0.9


def test_predictions_are_those_of_transferkit_predict_on_the_saved_run(data, tmp_path):
    from transferkit.predict import load_predictor

    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        cut="layer2",
        cache_dir=str(tmp_path),
        **FAST,
    ).fit(data, run_dir=tmp_path / "run")
    files = sorted(str(p) for p in data.rglob("*.png"))
    via_cli = load_predictor(tmp_path / "run").predict(files, top_k=1)
    probs = clf.predict_proba(files)
    assert [p.path for p in via_cli.predictions] == files
    assert np.array_equal(probs.max(1), [p.confidence for p in via_cli.predictions])
    assert clf.predict(files) == [p.label for p in via_cli.predictions]


@pytest.mark.parametrize("selection", ["holdout", "auto"])
def test_fit_with_a_callback_sees_every_epoch(data, tmp_path, selection):
    """The head trained by epochs shows them; the head fitted in one step by
    cross-validation (the default before fine-tuning) has none to show."""
    seen = []
    TransferClassifier(
        "test_resnet",
        "fine-tune",
        weights="none",
        cut="layer2",
        cache_dir=str(tmp_path),
        **{**FAST, "selection": selection},
    ).fit(data, callbacks=[EpochEndHook(lambda phase, epoch: seen.append((phase, epoch)))])
    first = ("head", 1) if selection == "holdout" else ("fine-tune", 1)
    assert seen[0] == first and seen[-1] == ("fine-tune", 2)


def test_saved_run_reloads_to_bit_identical_predictions(tmp_path, data):
    clf = TransferClassifier(
        "test_resnet",
        "fine-tune",
        weights="none",
        **{**FAST, "fine_tune_epochs": 1},
        cache_dir=str(tmp_path / "cache"),
    )
    clf.fit(data, run_dir=tmp_path / "run")
    files = sorted(str(p) for p in data.rglob("*.png"))
    loaded = TransferClassifier.load(tmp_path / "run")
    assert np.array_equal(loaded.predict_proba(files), clf.predict_proba(files))
    assert loaded.classes_ == ["blue", "green", "red"]
    assert loaded.predict(files[:1]) == clf.predict(files[:1])


def test_fit_leaves_the_garbage_collector_as_it_found_it(tmp_path, data):
    """fit freezes the objects that existed before it (torch's: nothing to collect)
    while it runs, and unfreezes them after; an outside freeze is left alone."""
    import gc

    seen = []
    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        **FAST,
        cache_dir=str(tmp_path),
        selection="holdout",  # epochs, for the hook to see
    )
    # once per phase: get_freeze_count() walks every frozen object (~40 ms here)
    hook = [EpochEndHook(lambda phase, epoch: epoch == 1 and seen.append(gc.get_freeze_count()))]
    frozen_by_the_session = gc.get_freeze_count() > 0  # tests/conftest.py freezes
    gc.unfreeze()
    clf.fit(data, callbacks=hook)
    assert seen and min(seen) > 0  # frozen during the fit
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        clf.fit(data, callbacks=hook)
        # still frozen (objects that died meanwhile left the frozen set)
        assert gc.get_freeze_count() > before // 2
    finally:
        gc.unfreeze()
        if frozen_by_the_session:
            gc.freeze()


def test_fit_passes_overwrite_to_the_run_only_when_asked(monkeypatch, data):
    import transferkit.fitting as fitting

    calls = []

    def fake_fit(data, config, **kwargs):
        calls.append(kwargs)
        raise InputError("stop here")

    monkeypatch.setattr(fitting, "fit", fake_fit)
    for overwrite in (True, False):
        with pytest.raises(InputError, match="stop here"):
            TransferClassifier("test_resnet").fit(data, run_dir="r", overwrite=overwrite)
    assert calls[0]["overwrite"] is True and calls[0]["run_dir"] == "r"
    assert calls[1].get("overwrite", False) is False


def _log_of_a_fit(data, tmp_path, **settings) -> str:
    """stderr of a tiny fit in a child process that configured no logging."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from transferkit import TransferClassifier; "
        f"TransferClassifier('test_resnet', 'feature-extract', weights='none', cut='layer1', "
        f"cache_dir=sys.argv[3], selection='holdout', "
        f"**{{**{FAST!r}, **{settings!r}}}).fit(sys.argv[2])"
    )
    env = {**os.environ, "TRANSFERKIT_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-c", code, "-", str(data), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    ).stderr


def test_fit_shows_its_progress_like_the_command_unless_verbose_is_false(data, tmp_path):
    """Without logging configured, fit() prints what ``transferkit fit`` prints; with
    verbose=False only warnings (Python's own last-resort handler) remain."""
    shown = _log_of_a_fit(data, tmp_path)
    assert "fit: 15 train / 3 val" in shown and "head: " in shown and "epochs, best" in shown
    assert "head: 6/30 epoch" in shown  # the plain progress lines (no terminal here)
    quiet = _log_of_a_fit(data, tmp_path, verbose=False).splitlines()
    assert not any(line.startswith(("fit: ", "head: ")) for line in quiet)  # warnings only


def test_fit_leaves_a_programs_own_logging_alone(data, tmp_path, caplog):
    import logging

    logger = logging.getLogger("transferkit")
    before = (list(logger.handlers), logger.level, logger.propagate)
    with caplog.at_level(logging.INFO, logger="transferkit"):
        TransferClassifier(
            "test_resnet",
            "feature-extract",
            weights="none",
            cut="layer1",
            cache_dir=str(tmp_path),
            **FAST,
        ).fit(data)
    assert any(r.message.startswith("fit: ") for r in caplog.records)  # through its handler
    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_evaluate_and_export_the_fitted_model(data, tmp_path):
    from transferkit.evaluation import evaluate_run
    from transferkit.predict import load_predictor

    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        cut="layer2",
        cache_dir=str(tmp_path / "cache"),
        **FAST,
    )
    with pytest.raises(InputError, match="not fitted yet"):
        clf.export(tmp_path / "model.pt", format="torchscript")
    clf.fit(data, run_dir=tmp_path / "run")
    ev = clf.evaluate(data)
    assert ev.to_dict() | {"model": ""} == evaluate_run(tmp_path / "run", data).to_dict() | {
        "model": ""
    }
    clf.run_dir_ = None  # the in-memory model, as after fit() without run_dir
    result = clf.export(tmp_path / "model.pt", format="torchscript")
    assert result.format == "torchscript" and result.max_abs_diff <= result.bound
    exported = load_predictor(tmp_path / "model.pt")
    files = sorted(str(p) for p in data.rglob("*.png"))[:4]
    assert exported.predict(files).predictions[0].label == clf.predict(files)[0]
    loaded = TransferClassifier.load(tmp_path / "run")
    assert loaded.export(tmp_path / "run.pt", format="torchscript").path == tmp_path / "run.pt"


# ------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run_batches(report, clock, *, epochs, steps, seconds, first=None):
    """Feed a slow phase's batches through ``report`` as fit_phase does; each batch
    takes ``seconds`` on the fake clock (the very first ``first``)."""
    from types import SimpleNamespace

    from transferkit.training import PhaseConfig, PhaseResult

    state = SimpleNamespace(
        name="fine-tune",
        config=PhaseConfig(name="fine-tune", epochs=epochs),
        epoch=0,
        current_epoch=0,
        result=PhaseResult("fine-tune"),
    )
    report.on_phase_start(state)
    for epoch in range(2):
        state.current_epoch = epoch + 1
        for i, _ in enumerate(report.wrap_batches(state, list(range(steps)))):
            clock.now += first if (epoch, i) == (0, 0) and first else seconds
        state.epoch = epoch + 1
    report.on_phase_end(state)


def test_a_long_phase_is_announced_and_the_eta_is_the_phases(monkeypatch, caplog):
    import logging

    from transferkit.training import ProgressReport

    monkeypatch.setenv("TRANSFERKIT_PROGRESS", "0")  # plain lines, as in a log file
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="transferkit"):
        _run_batches(ProgressReport(clock=clock), clock, epochs=15, steps=100, seconds=1, first=10)
    lines = [r.getMessage() for r in caplog.records]
    # 1 s a batch after a 10 s first one: 1,500 batches
    assert "fine-tune: ~25 min for up to 15 epochs (estimated from the first 5 batches)" in lines
    # the bar counts every batch of the phase: after 150 of 1,500 (159 s), 1,350 are left
    assert "fine-tune epoch 2/15: 150/1500 batch (0.9 batch/s, ETA 24 min)" in lines


def test_a_short_phase_is_not_announced(monkeypatch, caplog):
    import logging

    from transferkit.training import ProgressReport

    monkeypatch.setenv("TRANSFERKIT_PROGRESS", "0")
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="transferkit"):
        _run_batches(ProgressReport(clock=clock), clock, epochs=15, steps=10, seconds=0.2)
    assert not any("estimated from" in r.getMessage() for r in caplog.records)
