"""A run folder a user can trust: a new fit never continues a leftover checkpoint,
a checkpoint is complete or ignored, --resume refuses other data and settings, one
fit at a time, a refused fit leaves the folder as it was, saving is all or nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import FAST_FIT, TinyNet, make_image_folder
from transferkit import InputError
from transferkit.checkpoints import Checkpointer, CheckpointError
from transferkit.config import FitConfig
from transferkit.fitting import fit
from transferkit.heads import HeadConfig
from transferkit.run_folder import LOCK, FolderLock, folder_state
from transferkit.runs import load_run
from transferkit.training import EpochEndHook, TrainingInterrupted


def _config(tmp_path, **kw) -> FitConfig:
    params = {**FAST_FIT, "cache_dir": str(tmp_path / "cache"), "cut": "blocks.2"}
    return FitConfig(**{**params, "strategy": "fine-tune", **kw})


def _fit(tmp_path, data, run, *, seed=0, callbacks=(), **kw):
    flags = {k: kw.pop(k) for k in ("resume", "overwrite") if k in kw}
    torch.manual_seed(seed)
    return fit(
        data,
        _config(tmp_path, **kw),
        module=TinyNet(),
        run_dir=run,
        callbacks=callbacks,
        **flags,
    )


def _interrupt_at(phase_name, at_epoch):
    def hook(phase, epoch):
        if phase == phase_name and epoch == at_epoch:
            raise KeyboardInterrupt

    return EpochEndHook(hook)


def _interrupted(tmp_path, data, run, **kw):
    with pytest.raises(TrainingInterrupted):
        _fit(tmp_path, data, run, callbacks=[_interrupt_at("fine-tune", 1)], **kw)
    assert folder_state(run) == "interrupted"
    return run


def _weights(run) -> dict:
    return load_run(run, backbone=TinyNet()).model.state_dict()


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------- a new fit and a leftover checkpoint


def test_a_new_fit_into_an_interrupted_run_is_refused_not_continued(tmp_path, data):
    run = _interrupted(tmp_path, data, tmp_path / "run")
    before = sorted(p.name for p in (run / "checkpoint").iterdir())
    with pytest.raises(InputError, match=r"interrupted fit: add --resume .* or --overwrite"):
        _fit(tmp_path, data, run)
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == before


def test_overwrite_starts_over_from_scratch_even_with_other_classes(tmp_path, data):
    run = _interrupted(tmp_path, data, tmp_path / "run")
    two = make_image_folder(tmp_path / "two", per_class=6, size=16, classes=("red", "green"))
    fitted = _fit(tmp_path, two, run, overwrite=True)
    assert fitted.classes == ["green", "red"]
    fresh = _fit(tmp_path, two, tmp_path / "fresh")
    assert _same_weights(_weights(run), _weights(tmp_path / "fresh"))
    assert fitted.metrics["val_accuracy"] == fresh.metrics["val_accuracy"]


def test_a_finished_run_needs_overwrite_and_is_left_as_it_was(tmp_path, data):
    run = tmp_path / "run"
    _fit(tmp_path, data, run, strategy="feature-extract")
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(InputError, match=r"finished run .*--overwrite"):
        _fit(tmp_path, data, run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files


def test_resume_of_a_finished_run_says_there_is_nothing_to_resume(tmp_path, data):
    run = tmp_path / "run"
    _fit(tmp_path, data, run, strategy="feature-extract")
    with pytest.raises(InputError, match=r"nothing to resume .*finished run"):
        _fit(tmp_path, data, run, resume=True)


def test_resume_and_overwrite_together_are_refused(tmp_path, data):
    with pytest.raises(InputError, match="exclude each other"):
        _fit(tmp_path, data, tmp_path / "run", resume=True, overwrite=True)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------- a refused fit leaves


def test_a_folder_of_other_files_is_refused_and_left_untouched(tmp_path, data):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"mine")
    for flags in ({}, {"overwrite": True}):
        with pytest.raises(InputError, match="not a transferkit run"):
            _fit(tmp_path, data, out, **flags)
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]


def test_a_refused_fit_leaves_no_folder_behind(tmp_path):
    with pytest.raises(InputError):
        _fit(tmp_path, tmp_path / "no-such-data", tmp_path / "new" / "run")
    assert not (tmp_path / "new" / "run").exists()


def test_a_fit_refused_after_it_started_leaves_an_empty_folder_as_it_was(
    tmp_path, data, monkeypatch
):
    """A check that fails once the fit has begun writing (train.log, the settings)
    removes what the fit wrote."""
    import transferkit.fitting as fitting

    def refuse(*args, **kwargs):
        raise InputError("refused by a late check")

    monkeypatch.setattr(fitting, "train", refuse)
    out = tmp_path / "empty"
    out.mkdir()
    with pytest.raises(InputError, match="late check"):
        _fit(tmp_path, data, out)
    assert list(out.iterdir()) == []
    with pytest.raises(InputError, match="late check"):
        _fit(tmp_path, data, tmp_path / "created")
    assert not (tmp_path / "created").exists()


# ------------------------------------------------------------------------- --resume


def test_resume_refuses_other_data_and_says_what_differs(tmp_path, data):
    run = _interrupted(tmp_path, data, tmp_path / "run")
    other = tmp_path / "other"
    shutil.copytree(data, other)
    extra = next((other / "red").iterdir())
    shutil.copy(extra, other / "red" / "copy.png")
    with pytest.raises(InputError, match=r"data.*train .* -> .* images|images differ"):
        _fit(tmp_path, other, run, resume=True)
    swapped = tmp_path / "swapped"
    shutil.copytree(data, swapped)
    (swapped / "red").rename(swapped / "crimson")
    with pytest.raises(InputError, match="classes were"):
        _fit(tmp_path, swapped, run, resume=True)
    assert folder_state(run) == "interrupted"  # a refused resume keeps what it found


def test_resume_refuses_other_settings_and_names_them(tmp_path, data):
    run = _interrupted(tmp_path, data, tmp_path / "run")
    with pytest.raises(InputError, match=r"--fine-tune-lr 0.0005 \(the fit used 0.001\)"):
        _fit(tmp_path, data, run, resume=True, fine_tune_lr=5e-4)
    with pytest.raises(InputError, match="--hidden 16"):
        _fit(tmp_path, data, run, resume=True, head=HeadConfig(hidden=16))


def test_resume_with_the_same_data_moved_elsewhere_continues(tmp_path, data):
    run = _interrupted(tmp_path, data, tmp_path / "run")
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    resumed = _fit(tmp_path, moved, run, resume=True)
    assert [p.name for p in resumed.result.phases] == ["head", "fine-tune"]
    assert folder_state(run) == "finished"


# --------------------------------------------------------------------- checkpoints


def _phase_objects(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    return model, opt, sched


def _step(model, opt, sched):
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()


def test_a_checkpoint_interrupted_while_written_leaves_the_last_complete_one(tmp_path, monkeypatch):
    import transferkit.checkpoints as checkpoints

    model, opt, sched = _phase_objects(0)
    ckpt = Checkpointer(tmp_path / "c")
    _step(model, opt, sched)
    ckpt.save("fine-tune", model, opt, sched, model.state_dict(), {"epoch": 1})
    epoch1 = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, opt, sched)
    real, calls = checkpoints.save_tensors, []

    def dies_on_the_second_file(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, tensors, metadata)

    monkeypatch.setattr(checkpoints, "save_tensors", dies_on_the_second_file)
    with pytest.raises(OSError):
        ckpt.save("fine-tune", model, opt, sched, model.state_dict(), {"epoch": 2})
    fresh, opt2, sched2 = _phase_objects(1)
    state, _ = ckpt.load("fine-tune", fresh, opt2, sched2)
    assert state == {"epoch": 1}
    assert _same_weights(fresh.state_dict(), epoch1)


def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path):
    model, opt, sched = _phase_objects(0)
    ckpt = Checkpointer(tmp_path / "c")
    ckpt.save("head", model, opt, sched, model.state_dict(), {"epoch": 3})
    weights = next((tmp_path / "c").glob("head.*.model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=r"damaged: .*does not match its digest"):
        ckpt.load("head", *_phase_objects(1))
    weights.unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        ckpt.load("head", *_phase_objects(1))
    (tmp_path / "c" / "head.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        ckpt.load("head", *_phase_objects(1))


def test_only_the_checkpoint_in_force_is_kept(tmp_path):
    model, opt, sched = _phase_objects(0)
    ckpt = Checkpointer(tmp_path / "c")
    for epoch in range(4):
        _step(model, opt, sched)
        ckpt.save("fine-tune", model, opt, sched, model.state_dict(), {"epoch": epoch})
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    tensors = [n for n in names if n.endswith(".safetensors")]
    assert names == [*tensors, "fine-tune.json"] and len(tensors) == 3
    assert all(n.startswith("fine-tune.0003-") for n in tensors)
    record = json.loads((tmp_path / "c" / "fine-tune.json").read_text())
    assert sorted(f["name"] for f in record["files"].values()) == tensors


# ------------------------------------------------------------------ one writer


def test_a_second_fit_into_a_folder_in_use_is_refused_at_once(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    holder = FolderLock(run)
    holder.acquire()
    try:
        with pytest.raises(InputError, match="in use by another fit"):
            _fit(tmp_path, data, run)
        assert (run / LOCK).exists()  # the holder's lock is not disturbed
    finally:
        holder.release()
    _fit(tmp_path, data, run, strategy="feature-extract")
    assert not (run / LOCK).exists()


# -------------------------------------------------------------- all or nothing


def test_overwrite_never_leaves_old_records_beside_a_new_model(tmp_path, data):
    run = tmp_path / "run"
    _fit(tmp_path, data, run, strategy="feature-extract")
    with pytest.raises(TrainingInterrupted):
        _fit(
            tmp_path,
            data,
            run,
            overwrite=True,
            seed=1,
            callbacks=[_interrupt_at("fine-tune", 1)],
        )
    left = {p.name for p in run.iterdir()}
    records = {"config.json", "metrics.json", "history.csv", "report.html", "doctor.json"}
    assert not left & (records | {"trust.json", "trust.safetensors"})
    assert folder_state(run) == "interrupted"


def test_a_fit_killed_while_saving_is_an_interrupted_fit_that_resume_completes(
    tmp_path, data, monkeypatch
):
    import transferkit.runs as runs

    real = runs.atomic_write_text

    def dies_before_the_config(path, text):
        if path.name == "config.json":
            raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(runs, "atomic_write_text", dies_before_the_config)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, data, run)
    assert folder_state(run) == "interrupted"
    with pytest.raises(InputError, match="not a transferkit run"):
        load_run(run, backbone=TinyNet())
    monkeypatch.setattr(runs, "atomic_write_text", real)
    _fit(tmp_path, data, run, resume=True)
    _fit(tmp_path, data, tmp_path / "whole")
    assert _same_weights(_weights(run), _weights(tmp_path / "whole"))


def test_two_fit_processes_into_one_folder_one_is_refused(tmp_path, data):
    """Two ``transferkit fit`` commands started together on one --out: one trains,
    the other is refused in one line, and the folder holds the one run."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    env = {**os.environ, "TRANSFERKIT_PROGRESS": "0"}
    command = [
        sys.executable,
        *("-m", "transferkit", "fit", str(data), "--out", str(run)),
        *("--backbone", "test_resnet", "--weights", "none", "--image-size", "16"),
        *("--strategy", "fine-tune", "--fine-tune-epochs", "2", "--workers", "0"),
        *("--cache-dir", str(tmp_path / "c")),
    ]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outcomes = sorted((p.wait(300), p.stderr.read().decode()) for p in procs)
    (ok, _), (refused, message) = outcomes
    assert (ok, refused) == (0, 2), outcomes
    last = message.strip().splitlines()[-1]
    assert last.startswith("transferkit: error: --out"), message
    assert "in use by another fit" in last or "finished run" in last, message
    assert folder_state(run) == "finished" and not (run / LOCK).exists()
    assert load_run(run).classes == ["blue", "green", "red"]


def test_overwrite_knows_the_report_builders_file_names():
    from transferkit.reports.run_report import PLOTS, REPORT
    from transferkit.run_folder import REPORT_FILES

    assert REPORT_FILES == (REPORT, PLOTS)
