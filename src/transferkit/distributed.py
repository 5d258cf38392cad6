"""Data-parallel training across processes started by ``torchrun`` (PyTorch DDP).

Why a small layer of its own: the training code must run unchanged in one process and
in many. Everything it needs from the other processes goes through a
:class:`Collective`; the base class is the single-process version, in which every
operation is the identity, so nothing changes without torchrun. Under torchrun
(``WORLD_SIZE`` > 1 in the environment) :func:`setup` joins the process group (gloo
for CPU tensors, plus NCCL for CUDA tensors when there is a GPU) and returns a
:class:`GroupCollective`.

What is shared, and how (see docs/distributed.md):

- small documents (settings, phase results, history rows) travel as JSON, tensors as
  tensors: nothing is pickled, in keeping with "no pickle in what we read";
- feature extraction is sharded: each process runs the backbone on a disjoint slice
  and rank 0 gathers the rows (:meth:`Collective.gather_rows`);
- validation is sharded and its sums all-reduced, so every process takes the same
  early-stopping decision and none is left waiting in a collective;
- training batches come from a ``DistributedSampler`` (the global batch is split
  evenly) and DDP averages the gradients.

Only rank 0 writes files (run directory, checkpoints, feature cache, train.log).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler

from .errors import InputError

log = logging.getLogger("transferkit")

#: How long a process waits for the others in one collective. Rank 0 alone trains the
#: head and writes the run while the others wait, so this must cover that work.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Environment:
    """This process's place in the job, as torchrun announces it (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``); one process of one when they are absent."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def environment() -> Environment:
    """Read torchrun's variables without touching any process group."""

    def read(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise InputError(f"environment variable {name}={raw!r} is not an integer") from None

    env = Environment(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise InputError(f"RANK={env.rank} does not fit WORLD_SIZE={env.world_size}")
    return env


def is_main() -> bool:
    """True in rank 0 (and in a single process): the one process that writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return environment().is_main


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return environment().world_size


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``n`` items: disjoint shards that together
    hold every item exactly once (unlike ``DistributedSampler``, which pads with
    repeats), as evaluation needs."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class Collective:
    """The single-process collective: every operation is the identity. See the module
    docstring; :class:`GroupCollective` is the multi-process one."""

    rank = 0
    world_size = 1
    local_rank = 0
    created = False  # whether setup() created the process group (teardown ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when there are other processes to agree with."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait until every process got here."""

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over processes (float64)."""
        return [float(v) for v in values]

    def all_true(self, flag: bool) -> bool:
        """True only if ``flag`` is true in every process."""
        return bool(flag)

    def broadcast_json(self, obj=None):
        """Rank 0's JSON-able ``obj`` in every process (others pass anything)."""
        return json.loads(_dumps(obj))

    def broadcast_tensors(self, tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Rank 0's named tensors in every process (on the CPU; others pass ``None``)."""
        return {k: v.detach().cpu() for k, v in (tensors or {}).items()}

    def broadcast_module(self, module: nn.Module) -> None:
        """Overwrite ``module``'s parameters and buffers with rank 0's, in place."""

    def gather_rows(self, rows: np.ndarray) -> list[np.ndarray] | None:
        """Rank 0 receives every process's array (in rank order); others get ``None``."""
        return [rows]

    def shard(self, items: Sequence) -> list:
        """This process's share of ``items``: every ``world_size``-th, from ``rank``."""
        return list(items[self.rank :: self.world_size])

    def train_sampler(self, dataset, seed: int) -> DistributedSampler:
        """Shuffling sampler for training; call ``set_epoch`` every epoch.

        One process uses it too (``num_replicas=1``), so the batches do not depend on
        the process count: global batch ``k`` of an epoch is positions ``k*B`` to
        ``k*B+B-1`` of one seeded permutation, dealt out to the ranks in turn.
        """
        return DistributedSampler(
            dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed
        )

    def eval_sampler(self, n: int) -> ShardSampler:
        return ShardSampler(n, self.rank, self.world_size)

    def per_process_batch(self, global_batch: int) -> int:
        """``--batch-size`` is the global batch; each process takes an equal share."""
        if global_batch % self.world_size:
            raise InputError(
                f"--batch-size {global_batch} is the global batch and must divide evenly "
                f"among the {self.world_size} processes"
            )
        return global_batch // self.world_size

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: ``model`` itself, or a DDP wrapper of it."""
        return model


class GroupCollective(Collective):
    """Collectives over the default process group (torchrun)."""

    def __init__(self, env: Environment):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = env.local_rank
        backend = str(dist.get_backend())
        # Small documents travel as CPU tensors where gloo is there; NCCL needs CUDA.
        self.comm = (
            torch.device("cpu")
            if "gloo" in backend
            else torch.device("cuda", torch.cuda.current_device())
        )

    def barrier(self) -> None:
        self.sum([0.0])  # an all-reduce: works on every backend, no device guessing

    def sum(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_true(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.comm)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def broadcast_json(self, obj=None):
        data = _dumps(obj).encode() if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.comm)
        dist.broadcast(size, src=0)
        buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=self.comm)
        if self.is_main:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buf, src=0)
        return json.loads(buf.cpu().numpy().tobytes().decode())

    def broadcast_tensors(self, tensors):
        manifest = None
        if self.is_main:
            manifest = {k: [list(v.shape), str(v.dtype)] for k, v in tensors.items()}
        manifest = self.broadcast_json(manifest)
        out = {}
        for name, (shape, dtype) in manifest.items():
            if self.is_main:
                t = tensors[name].detach().to(self.comm).contiguous().clone()
            else:
                t = torch.empty(shape, dtype=_dtype(dtype), device=self.comm)
            dist.broadcast(t, src=0)
            out[name] = t.cpu()
        return out

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module) -> None:
        for t in module.state_dict().values():  # shares storage with the module's tensors
            buf = t.detach().to(self.comm)
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data_ptr():
                t.copy_(buf)

    def gather_rows(self, rows: np.ndarray) -> list[np.ndarray] | None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        # Shapes first (padded to a fixed length), then the data padded to the largest.
        header = torch.full((9,), -1, dtype=torch.int64, device=self.comm)
        header[0] = rows.ndim
        header[1 : 1 + rows.ndim] = torch.tensor(rows.shape, dtype=torch.int64)
        headers = [torch.empty_like(header) for _ in range(self.world_size)]
        dist.all_gather(headers, header)
        shapes = [tuple(h[1 : 1 + int(h[0])].tolist()) for h in headers]
        longest = max(math.prod(s) for s in shapes)
        flat = torch.zeros(longest, dtype=torch.float32, device=self.comm)
        flat[: rows.size] = torch.from_numpy(rows.reshape(-1)).to(self.comm)
        parts = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(parts, flat)
        if not self.is_main:
            return None
        return [
            p[: math.prod(s)].cpu().numpy().reshape(s) for p, s in zip(parts, shapes, strict=True)
        ]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP over the parameters that are trainable *now*: wrap after freezing, so
        frozen blocks neither sync nor need ``find_unused_parameters``."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)


def _dumps(obj) -> str:
    # numpy scalars (scores in metrics) become numbers; anything else odd, its text
    return json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o))


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


SINGLE = Collective()


def setup(device: torch.device, env: Environment | None = None) -> Collective:
    """Join torchrun's process group (if ``WORLD_SIZE`` > 1) and return the collective.

    A process group that the caller already initialised is used as it is. Otherwise
    one is created from torchrun's environment (``MASTER_ADDR``/``MASTER_PORT`` or its
    rendezvous): gloo for CPU tensors, and NCCL for CUDA tensors when ``device`` is a
    GPU. :func:`teardown` destroys only a group created here.
    """
    env = env or environment()
    if env.world_size == 1 and not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    created = False
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
        created = True
    collective = GroupCollective(env)
    collective.created = created
    if collective.world_size == 1:
        return collective
    log.info(
        "distributed: rank %d of %d (local rank %d, %s)",
        collective.rank,
        collective.world_size,
        collective.local_rank,
        dist.get_backend(),
    )
    return collective


def teardown(collective: Collective) -> None:
    """Leave the process group if :func:`setup` created it."""
    if collective.created and dist.is_initialized():
        dist.destroy_process_group()
