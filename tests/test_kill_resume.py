"""Kill a fine-tune with SIGKILL at many moments, inside checkpoint writes and
between them, and at random times; every ``--resume`` must end with the weights of
an uninterrupted fit, bit for bit."""

from __future__ import annotations

import multiprocessing
import random
import shutil
import signal

import pytest
import torch

import killing
from transferkit.run_folder import folder_state

pytestmark = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="needs a fork server"
)


@pytest.fixture(scope="module")
def forks():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transferkit.fitting", "helpers", "killing"])
    return ctx


def _child(ctx, *args, **kwargs) -> int:
    p = ctx.Process(target=killing.child, args=args, kwargs=kwargs)
    p.start()
    p.join(120)
    return p.exitcode


def _killed_after(ctx, seconds, *args) -> int:
    p = ctx.Process(target=killing.child, args=args)
    p.start()
    p.join(seconds)
    if p.exitcode is None:
        p.kill()
        p.join()
    return p.exitcode


def _finish(ctx, data, run, cache) -> str:
    """Whatever the kill left: resume an interrupted fit, start a fit that never
    began; a finished one stays as it is."""
    state = folder_state(run)
    if state != "finished":
        assert _child(ctx, data, str(run), cache, resume=state == "interrupted") == 0, state
    return state


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_resume_after_a_kill_ends_bit_identical(tmp_path, data, forks):
    cache = str(tmp_path / "cache")
    whole = tmp_path / "whole"
    assert _child(forks, str(data), str(whole), cache) == 0
    want = killing.weights(whole)
    renames = killing.count_renames(str(data), str(tmp_path / "count"), cache)
    moments = 2 * renames
    assert moments >= 24, moments
    events = sorted(random.Random(0).sample(range(moments), 20))
    seen = []
    for event in events:
        run = tmp_path / f"event-{event}"
        code = _child(forks, str(data), str(run), cache, event=event)
        assert code == -signal.SIGKILL, (event, code)
        seen.append(_finish(forks, str(data), run, cache))
        assert _same(killing.weights(run), want), f"killed at moment {event}: other weights"
        shutil.rmtree(run)
    assert seen.count("interrupted") >= 10, seen
    rng = random.Random(1)
    for i in range(4):
        run = tmp_path / f"timed-{i}"
        _killed_after(forks, rng.uniform(0.05, 1.0), str(data), str(run), cache)
        seen.append(_finish(forks, str(data), run, cache))
        assert _same(killing.weights(run), want), f"killed at random time {i}: other weights"
