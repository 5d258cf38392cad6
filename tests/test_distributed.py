"""Several processes without a GPU: what every process shares through the collective
(global batches, evaluation shards, broadcasts), and one process changing nothing.
The real 2-process job is in test_torchrun.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import TinyNet
from transferkit import InputError
from transferkit.distributed import (
    SINGLE,
    Collective,
    Environment,
    GroupCollective,
    ShardSampler,
    environment,
    setup,
    teardown,
)


class _Rank(Collective):
    """A process's view of the job without a process group (samplers, shards)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world_size = rank, world


def test_global_batches_do_not_depend_on_the_process_count():
    data = list(range(24))
    for epoch in range(3):
        one = SINGLE.train_sampler(data, seed=5)
        one.set_epoch(epoch)
        order = list(one)
        shares = []
        for rank in (0, 1):
            s = _Rank(rank, 2).train_sampler(data, seed=5)
            s.set_epoch(epoch)
            shares.append(list(s))
        for step in range(3):  # global batch 8 = 4 per process
            global_batch = shares[0][step * 4 : step * 4 + 4] + shares[1][step * 4 : step * 4 + 4]
            assert sorted(global_batch) == sorted(order[step * 8 : step * 8 + 8])


def test_evaluation_shards_hold_every_item_once():
    seen = [i for r in range(3) for i in ShardSampler(7, r, 3)]
    assert sorted(seen) == list(range(7))
    assert [len(ShardSampler(7, r, 3)) for r in range(3)] == [3, 2, 2]
    assert _Rank(1, 3).shard(list("abcdefg")) == ["b", "e"]


def test_batch_size_is_the_global_batch():
    assert _Rank(0, 2).per_process_batch(8) == 4
    assert SINGLE.per_process_batch(7) == 7
    with pytest.raises(InputError, match="global batch"):
        _Rank(0, 3).per_process_batch(8)


def test_one_process_changes_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert environment() == Environment(0, 1, 0)
    assert setup(torch.device("cpu")) is SINGLE and not SINGLE.active
    net = torch.nn.Linear(2, 2)
    assert SINGLE.wrap(net, torch.device("cpu")) is net
    assert SINGLE.sum([1, 2.5]) == [1.0, 2.5] and SINGLE.all_true(True)
    assert SINGLE.broadcast_json({"a": (1, 2)}) == {"a": [1, 2]}
    rows = np.ones((3, 2), np.float32)
    assert SINGLE.gather_rows(rows)[0] is rows


def test_environment_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = environment()
    assert env == Environment(1, 2, 1) and not env.is_main
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InputError, match="RANK=2"):
        environment()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(InputError, match="not an integer"):
        environment()


def test_group_collective_round_trips_in_a_one_process_gloo_group(tmp_path, monkeypatch):
    """The tensor and JSON transport of GroupCollective, in a real gloo group of one."""
    import torch.distributed as dist

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        c = setup(torch.device("cpu"))
        assert isinstance(c, GroupCollective) and not c.created  # the caller's group
        assert c.broadcast_json({"x": [1, 2.5, None], "y": "z"}) == {"x": [1, 2.5, None], "y": "z"}
        assert c.sum([1, 2]) == [1.0, 2.0] and c.all_true(True) and not c.all_true(False)
        tensors = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
        got = c.broadcast_tensors(tensors)
        assert all(torch.equal(got[k], tensors[k]) for k in tensors)
        rows = np.arange(6, dtype=np.float32).reshape(3, 2)
        (back,) = c.gather_rows(rows)
        np.testing.assert_array_equal(back, rows)
        net = TinyNet()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        c.broadcast_module(net)
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        c.barrier()
        teardown(c)
        assert dist.is_initialized()  # not ours to destroy
    finally:
        dist.destroy_process_group()
