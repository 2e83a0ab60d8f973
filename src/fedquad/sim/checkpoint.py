"""Atomic checkpoints of a run: adapter tensors in safetensors, everything else in JSON.

Layout: `<run>/checkpoint/adapter.safetensors` and `<run>/checkpoint/state.json` (round, clock,
strategy memory with the planner state, the config, the history so far, and torch's RNG state).
A new checkpoint is written to a sibling folder and swapped in with renames, so a run killed at
any moment leaves either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import base64
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from fedquad.errors import FedquadError
from fedquad.sim.round import RoundState

CHECKPOINT_VERSION = 1


def write_json_atomic(path: str, data) -> None:
    """Write JSON to a temporary sibling and rename it: readers never see half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def save_checkpoint(run_dir: str, state: RoundState, config: dict, history: list[dict]) -> str:
    final = os.path.join(run_dir, "checkpoint")
    tmp, old = final + ".tmp", final + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.contiguous() for k, v in state.global_state.items()}, os.path.join(tmp, "adapter.safetensors"))
    meta = {"version": CHECKPOINT_VERSION, "round_index": state.round_index, "clock_s": state.clock_s,
            "strategy_state": state.strategy_state, "config": config, "history": history,
            "key_order": list(state.global_state),
            "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    if os.path.isdir(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run_dir: str) -> tuple[RoundState, dict, list[dict]]:
    """(state, config dict, history) of the checkpoint under `run_dir`."""
    folder = os.path.join(run_dir, "checkpoint")
    if not os.path.isdir(folder) and os.path.isdir(folder + ".old"):
        folder = folder + ".old"  # killed between the two renames
    path = os.path.join(folder, "state.json")
    if not os.path.isfile(path):
        raise FedquadError(f"no checkpoint in {run_dir} (expected {path})")
    try:
        with open(path) as f:
            meta = json.load(f)
        tensors = load_file(os.path.join(folder, "adapter.safetensors"))
    except (OSError, json.JSONDecodeError, Exception) as exc:  # safetensors raises its own error types
        raise FedquadError(f"checkpoint in {run_dir} is unreadable: {exc}") from None
    if meta.get("version") != CHECKPOINT_VERSION:
        raise FedquadError(f"checkpoint in {run_dir} has version {meta.get('version')}, expected {CHECKPOINT_VERSION}")
    rng = torch.frombuffer(bytearray(base64.b64decode(meta["torch_rng"])), dtype=torch.uint8)
    torch.set_rng_state(rng)
    state = RoundState(meta["round_index"], meta["clock_s"], {k: tensors[k] for k in meta["key_order"]},
                       meta["strategy_state"])
    return state, meta["config"], meta["history"]
