"""Atomic checkpoints of a run: adapter tensors in safetensors, everything else in JSON.

Layout: `<run>/checkpoint/adapter.safetensors` and `<run>/checkpoint/state.json` (round, clock,
strategy memory with the planner state, the config, the history so far, and torch's RNG state).

Write sequence (`save_checkpoint`), each step one filesystem operation:

    recover -> mkdir checkpoint.tmp -> adapter -> state.json -> rename checkpoint -> checkpoint.old
            -> rename checkpoint.tmp -> checkpoint -> remove checkpoint.old

`checkpoint` only ever appears by renaming a complete `checkpoint.tmp`, so whenever it exists it
is the newest complete checkpoint; `checkpoint.old` without `checkpoint` is the previous one
(killed between the two renames); `checkpoint.tmp` is never trusted. `recover` applies exactly
these rules before every write, so a run killed after any step resumes (tests kill it after
every one of them).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fedquad.errors import FedquadError
from fedquad.sim.round import RoundState

CHECKPOINT_VERSION = 1
STATE_KEYS = ("version", "round_index", "clock_s", "strategy_state", "config", "history", "key_order", "torch_rng")
CHECKPOINT_DIRS = ("checkpoint", "checkpoint.tmp", "checkpoint.old")


def _after_step(step: str) -> None:
    """Called after every filesystem step of `save_checkpoint`; tests replace it to crash there."""


def _write_bytes(path: str, data: bytes) -> None:
    # open() honours the umask (0644 files like every other output); fsync: durable before the rename
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the renames are still atomic
    finally:
        os.close(fd)


def save_tensors(path: str, tensors: dict) -> None:
    """safetensors file written like every other output: mode from the umask (safetensors' own
    `save_file` makes 0600 files), fsynced."""
    _write_bytes(path, save_safetensors({k: v.contiguous() for k, v in tensors.items()}))


def honour_umask(folder: str) -> None:
    """Give the files under `folder` the mode open() would (0644 under umask 022): for writers
    outside our control (PEFT's save_pretrained goes through safetensors' 0600 `save_file`)."""
    mask = os.umask(0)
    os.umask(mask)
    for root, _dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def recover_checkpoint(run_dir: str) -> str | None:
    """Bring `run_dir`'s checkpoint folders back to one complete `checkpoint` (see the module doc);
    returns its path, or None when there is no complete checkpoint."""
    final = os.path.join(run_dir, "checkpoint")
    tmp, old = final + ".tmp", final + ".old"
    if not os.path.isdir(final) and os.path.isdir(old):
        os.replace(old, final)  # killed between the two renames: the previous checkpoint is the newest
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return final if os.path.isdir(final) else None


def save_checkpoint(run_dir: str, state: RoundState, config: dict, history: list[dict]) -> str:
    final = os.path.join(run_dir, "checkpoint")
    tmp, old = final + ".tmp", final + ".old"
    recover_checkpoint(run_dir)
    _after_step("recover")
    os.makedirs(tmp)
    _after_step("mkdir tmp")
    save_tensors(os.path.join(tmp, "adapter.safetensors"), state.global_state)
    _after_step("adapter")
    meta = {"version": CHECKPOINT_VERSION, "round_index": state.round_index, "clock_s": state.clock_s,
            "strategy_state": state.strategy_state, "config": config, "history": history,
            "key_order": list(state.global_state),
            "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    _write_bytes(os.path.join(tmp, "state.json"), json.dumps(meta).encode())
    _fsync_dir(tmp)
    _after_step("state")
    if os.path.isdir(final):
        os.replace(final, old)
        _after_step("rename old")
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    _after_step("rename new")
    shutil.rmtree(old, ignore_errors=True)
    _after_step("remove old")
    return final


@dataclass
class Checkpoint:
    state: RoundState
    config: dict
    history: list[dict]
    torch_rng: torch.Tensor

    def restore_rng(self) -> None:
        torch.set_rng_state(self.torch_rng)


def find_checkpoint(run_dir: str) -> str | None:
    """The folder holding the newest complete checkpoint, without changing anything on disk."""
    final = os.path.join(run_dir, "checkpoint")
    for folder in (final, final + ".old"):  # .old alone: killed between the two renames
        if os.path.isdir(folder):
            return folder
    return None


def read_checkpoint(run_dir: str) -> Checkpoint:
    """The checkpoint under `run_dir`, read and checked (no side effects: torch's RNG is untouched)."""
    folder = find_checkpoint(run_dir)
    if folder is None:
        raise FedquadError(f"no checkpoint in {run_dir} (expected {os.path.join(run_dir, 'checkpoint')})")
    path = os.path.join(folder, "state.json")
    try:
        with open(path) as f:
            meta = json.load(f)
        with open(os.path.join(folder, "adapter.safetensors"), "rb") as f:
            tensors = load_safetensors(f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, Exception) as exc:  # safetensors has its own errors
        raise FedquadError(f"checkpoint in {run_dir} is unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise FedquadError(f"checkpoint {path} is damaged: state.json holds no object")
    missing = [k for k in STATE_KEYS if k not in meta]
    if missing:
        raise FedquadError(f"checkpoint {path} is damaged: state.json lacks {', '.join(missing)}")
    if meta["version"] != CHECKPOINT_VERSION:
        raise FedquadError(f"checkpoint in {run_dir} has version {meta['version']}, expected {CHECKPOINT_VERSION}")
    try:
        rng = torch.frombuffer(bytearray(base64.b64decode(meta["torch_rng"], validate=True)), dtype=torch.uint8)
        if rng.numel() != torch.get_rng_state().numel():
            raise ValueError(f"torch_rng holds {rng.numel()} bytes, expected {torch.get_rng_state().numel()}")
        absent = [k for k in meta["key_order"] if k not in tensors]
        if absent:
            raise ValueError(f"adapter.safetensors lacks {absent[0]!r}")
        state = RoundState(int(meta["round_index"]), float(meta["clock_s"]),
                           {k: tensors[k] for k in meta["key_order"]}, meta["strategy_state"])
        if not (isinstance(meta["config"], dict) and isinstance(meta["history"], list)
                and isinstance(state.strategy_state, dict)):
            raise ValueError("config, history or strategy_state has the wrong type")
    except (TypeError, ValueError) as exc:
        raise FedquadError(f"checkpoint {path} is damaged: {exc}") from None
    return Checkpoint(state, meta["config"], meta["history"], rng)


def load_checkpoint(run_dir: str) -> tuple[RoundState, dict, list[dict]]:
    """(state, config dict, history) of the checkpoint under `run_dir`; restores torch's RNG state."""
    ck = read_checkpoint(run_dir)
    ck.restore_rng()
    return ck.state, ck.config, ck.history
