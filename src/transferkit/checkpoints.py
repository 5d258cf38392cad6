"""Per-epoch training checkpoints for ``fit --resume``, written without pickle.

Weights and optimizer tensors go to safetensors; everything else (epoch, early
stopping state, optimizer hyper-parameters, scheduler counters) to JSON.

A checkpoint is complete or ignored. Each epoch's tensors go to files of their own
(``fine-tune.0007-3fa2c1.model.safetensors``, ...); the phase's JSON record is written last,
atomically, and names those files with their SHA-256. Until it is replaced, the
record names the previous epoch's files, which stay until then: a kill or a full disk
at any moment leaves the last complete checkpoint in force. A file that does not
match its record (altered or truncated since) is a one-line error, not a wrong model.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .atomic import atomic_write_text, file_sha256, fsync_dir, save_tensors
from .errors import InputError


def split_optimizer_state(state: dict) -> tuple[dict, dict]:
    """An optimizer state dict as (named tensors, JSON-able rest): safetensors and JSON
    hold it on disk, and processes of a distributed run exchange it the same way."""
    tensors, plain = {}, {"state": {}, "param_groups": state["param_groups"]}
    for idx, entry in state["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                plain["state"][str(idx)][key] = value
    return tensors, plain


def join_optimizer_state(tensors: dict, plain: dict) -> dict:
    """The inverse of :func:`split_optimizer_state`."""
    state: dict[int, dict] = {int(i): dict(v) for i, v in plain["state"].items()}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, then every per-parameter state tensor laid
    out like its parameter.

    Why: safetensors stores tensors contiguous and torch's ``load_state_dict`` keeps
    that layout, while the fused Adam kernel assumes that a parameter and its moments
    share strides. A channels_last convolution weight (``Compute.prepare``) with a
    contiguous ``exp_avg`` is then updated with scrambled moments: a resumed run ended
    0.004 away from an uninterrupted one (torch 2.14, CPU), 0 after this."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = optimizer.state.get(p, {})
            for key, value in entry.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == p.shape
                    and value.stride() != p.stride()
                ):
                    entry[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


_ROLES = ("model", "best", "optim")


class Checkpointer:
    """Saves and restores one phase's training state in ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _record(self, phase: str) -> Path:
        return self.folder / f"{phase}.json"

    def has(self, phase: str) -> bool:
        return self._record(phase).is_file()

    def save(self, phase, model: nn.Module, optimizer, scheduler, best_state, state: dict) -> None:
        """Write one phase's checkpoint; ``state`` is the JSON-able rest (epoch,
        result, callback states)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        opt_tensors, opt_plain = split_optimizer_state(optimizer.state_dict())
        tensors = {"model": model.state_dict(), "best": best_state, "optim": opt_tensors}
        # a name no earlier save used: the record in force never names a file rewritten
        stamp = f"{int(state.get('epoch', 0)):04d}-{secrets.token_hex(3)}"
        files = {}
        for role in _ROLES:
            path = self.folder / f"{phase}.{stamp}.{role}.safetensors"
            save_tensors(path, tensors[role])
            files[role] = {"name": path.name, "sha256": file_sha256(path)}
        fsync_dir(self.folder)
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        doc = {
            "format": 2,
            "phase": phase,
            "files": files,
            "state": state,
            "optimizer": opt_plain,
            "scheduler": sched,
        }
        atomic_write_text(self._record(phase), json.dumps(doc, default=float))
        fsync_dir(self.folder)
        self._remove_unreferenced(phase, {f["name"] for f in files.values()})

    def _remove_unreferenced(self, phase: str, keep: set[str]) -> None:
        """Files of earlier epochs of ``phase``, once the record no longer names them."""
        for f in self.folder.glob(f"{phase}.*.safetensors"):
            if f.name not in keep:
                f.unlink(missing_ok=True)

    def _read(self, phase: str) -> dict:
        """The phase's record, its files checked against their digests."""
        record = self._record(phase)
        try:
            doc = json.loads(record.read_text())
            files = {role: doc["files"][role] for role in _ROLES}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(record, f"unreadable ({type(exc).__name__}: {exc})") from None
        for entry in files.values():
            path = self.folder / entry["name"]
            if not path.is_file():
                raise CheckpointError(record, f"{entry['name']} is missing")
            if file_sha256(path) != entry["sha256"]:
                raise CheckpointError(record, f"{entry['name']} does not match its digest")
        return doc

    def load(self, phase, model: nn.Module, optimizer, scheduler) -> tuple[dict, dict]:
        """Restore model, optimizer and scheduler in place; returns ``(state, best
        weights)`` as saved."""
        doc = self._read(phase)
        path = {role: str(self.folder / doc["files"][role]["name"]) for role in _ROLES}
        try:
            model.load_state_dict(load_file(path["model"]))
            best = load_file(path["best"])
            load_optimizer_state(
                optimizer, join_optimizer_state(load_file(path["optim"]), doc["optimizer"])
            )
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            problem = f"does not fit the model: {reason}"
            raise CheckpointError(self._record(phase), problem) from None
        sched = scheduler.state_dict()
        sched.update(doc["scheduler"])
        scheduler.load_state_dict(sched)
        return doc["state"], best

    def clear(self) -> None:
        """Remove the folder and everything in it."""
        shutil.rmtree(self.folder, ignore_errors=True)


class CheckpointError(InputError):
    """A checkpoint that cannot be used: the message names it and the way out."""

    def __init__(self, record: Path, problem: str):
        super().__init__(
            f"the checkpoint {str(record)!r} is damaged: {problem}; start the fit again "
            "with --overwrite (or remove the folder)"
        )
