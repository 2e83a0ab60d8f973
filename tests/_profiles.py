"""Synthetic cost-model profiles for planner/cost-model/CLI tests (no torch, no measuring).

`synthetic_profile` returns the JSON dict `fedquad profile` would write, built as a Profile and
serialised by the format's owner (fedquad.costmodel.profile), so it is always the current schema
version; scalars apply to every block, lists give per-block values. The defaults resemble MiniLM (6 blocks)
at batch 16 x 64. The lowest-trainable-block bytes equal the ordinary ones unless
`lowest_saving` (bytes saved by the lowest block, raw; kept scales with the kept ratio) is given.
With `input_bytes_per_block` the blocks also carry recompute bytes (what a checkpointed block
stores; quantized, that times the kept ratio), else the profile has none (supports_recompute False).
"""

from __future__ import annotations

import json
import os

from fedquad.costmodel.profile import BlockProfile, HeadProfile, Profile, profile_document
from fedquad.plan import DEFAULT_GROUP_SIZE


def _per_block(value, i):
    return value[i] if isinstance(value, (list, tuple)) else value


def synthetic_profile(num_blocks: int = 6, saved_bytes_per_block=9_000_000, kept_ratio_8: float = 0.27,
                      kept_ratio_4: float = 0.14, adapter_bytes_per_block=98_304, forward_s=0.004,
                      backward_s=0.008, quant_s_8=0.001, quant_s_4=0.0012, frozen_weight_bytes: int = 90_000_000,
                      head_adapter_bytes: int = 1_536, workspace_bytes: int = 5_000_000,
                      machine_gflops: float = 85.3, head_saved_bytes: int = 20_000, model: str = "synthetic",
                      optimizer_factor: float = 3.0, lowest_saving=0, input_bytes_per_block=None) -> dict:
    blocks = []
    for i in range(num_blocks):
        saved = _per_block(saved_bytes_per_block, i)
        low = saved - _per_block(lowest_saving, i)
        r8, r4 = _per_block(kept_ratio_8, i), _per_block(kept_ratio_4, i)
        inp = None if input_bytes_per_block is None else _per_block(input_bytes_per_block, i)
        blocks.append(BlockProfile(
            index=i, saved_bytes=saved, kept_bytes={8: int(saved * r8), 4: int(saved * r4)},
            saved_bytes_lowest=low, kept_bytes_lowest={8: int(low * r8), 4: int(low * r4)},
            adapter_bytes=_per_block(adapter_bytes_per_block, i),
            forward_s=_per_block(forward_s, i), backward_s=_per_block(backward_s, i),
            quant_s={8: _per_block(quant_s_8, i), 4: _per_block(quant_s_4, i)},
            input_bytes=inp, input_kept_bytes=None if inp is None else {8: int(inp * r8), 4: int(inp * r4)}))
    adapter = sum(b.adapter_bytes for b in blocks) + head_adapter_bytes
    return profile_document(Profile(
        model=model, family="bert", num_blocks=num_blocks, batch_size=16, seq_len=64, dtype="float32",
        device="cpu", group_size=DEFAULT_GROUP_SIZE, machine_gflops=machine_gflops, frozen_weight_bytes=frozen_weight_bytes,
        adapter_bytes=adapter, head_adapter_bytes=head_adapter_bytes,
        optimizer_bytes_per_trainable_byte=optimizer_factor, workspace_bytes=workspace_bytes,
        embedding_forward_s=0.001, head=HeadProfile(saved_bytes=head_saved_bytes, forward_s=0.0002, backward_s=0.0003),
        blocks=tuple(blocks),
        kept_ratio={8: kept_ratio_8 if not isinstance(kept_ratio_8, list) else 0.27,
                    4: kept_ratio_4 if not isinstance(kept_ratio_4, list) else 0.14}))


def minilm_like_profile() -> dict:
    """all-MiniLM-L6-v2 at batch 16 x 64: byte counts as `fedquad profile` measured them on CPU
    (exact and machine-independent); times are smooth stand-ins (measured ones are noisy)."""
    data = synthetic_profile(num_blocks=6, saved_bytes_per_block=41_107_456, frozen_weight_bytes=90_855_944,
                             adapter_bytes_per_block=221_184, head_adapter_bytes=3_080, workspace_bytes=41_107_456,
                             head_saved_bytes=73_988, forward_s=0.045, backward_s=0.02, quant_s_8=0.01,
                             quant_s_4=0.012, machine_gflops=200.0, model="minilm-like")
    for b in data["blocks"]:
        b["kept_bytes"] = {"8": 11_063_552, "4": 5_949_696}
        b["kept_bytes_lowest"] = dict(b["kept_bytes"])  # BERT: the lowest block saves the same
    data["head"]["saved_bytes_depth0"] = 24_836
    return data


def write_profile(directory, name: str = "profile.json", **kwargs) -> str:
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        json.dump(kwargs.pop("data", None) or synthetic_profile(**kwargs), f)
    return path
