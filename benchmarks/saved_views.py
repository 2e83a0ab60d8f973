"""Saved activations counted by storage, independently of fedquad's pack hooks, against `raw_bytes`.

    .venv/bin/python benchmarks/saved_views.py [--model minilm] [--depths 1 3 6] [--batch-size 16]
        [--seq-len 64] [--bits 0|8|4] [--json]

For each depth the model runs one forward + backward twice:

1. *independent*: plain `torch.autograd.graph.saved_tensors_hooks` around the whole forward, with
   the plan's LoRA tensors (and head) trainable and everything else frozen (a frozen prefix saves
   nothing, exactly as under no_grad). Every saved tensor is held for the forward, so no storage
   address is reused; weights are dropped (matched on storage); each distinct storage is counted
   once, at its full size, and attributed to the block whose forward saved it (plain module
   hooks). Also reported: the bytes counted per object and per view (storage, offset, shape,
   stride, dtype), i.e. how much a per-object dedup counts twice, and views that do not cover
   their storage.
2. *fedquad*: the same step under `PlanRuntime` (nothing quantized); its per-block `raw_bytes`.

The done-when check of issue 10: the two totals agree within 1% at every depth. Afterwards the
step's packed results must be released: `retained_bytes` is what the policies still reference
after backward (0 expected).
"""

from __future__ import annotations

import argparse
import gc
import json
from collections import defaultdict

import torch

from fedquad.client.runtime import PlanRuntime
from fedquad.client.train import forward_backward
from fedquad.diagnostics.memory import generated_batch
from fedquad.models import load_model
from fedquad.plan import ClientPlan

MiB = 2 ** 20


def independent_count(adapted, plan: ClientPlan, batch: dict) -> dict:
    """Saved bytes per block by storage, with nothing of fedquad's hooks involved."""
    keys = set(adapted.keys_for_plan(plan))
    for key in adapted.adapter_keys:
        adapted.parameter(key).requires_grad_(key in keys)
    weights = {t.untyped_storage().data_ptr() for t in list(adapted.model.parameters()) + list(adapted.model.buffers())}
    current = ["outside"]

    def enter(index):
        return lambda *args: current.append(index)

    def leave(*args):
        current.pop()

    handles = []
    for i, block in enumerate(adapted.blocks):
        handles.append(block.register_forward_pre_hook(enter(i)))
        handles.append(block.register_forward_hook(leave, always_call=True))
    held, storages, objects, views = [], {}, defaultdict(int), set()

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in weights and t.numel():
            held.append(t)  # keeps every address live: no reuse within the forward
            where = current[-1]
            entry = storages.setdefault(s.data_ptr(), {"block": where, "nbytes": s.nbytes(), "covers": False})
            entry["covers"] |= t.is_contiguous() and t.storage_offset() == 0 and t.numel() * t.element_size() == s.nbytes()
            objects[where] += t.numel() * t.element_size()
            views.add((s.data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype))
        return t

    try:
        batch = {k: v.to(adapted.device) for k, v in batch.items()}
        torch.manual_seed(0)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = adapted.model(**batch).loss
        loss.backward()
    finally:
        for h in handles:
            h.remove()
        adapted.model.zero_grad(set_to_none=True)
    per_block = defaultdict(int)
    for entry in storages.values():
        per_block[entry["block"]] += entry["nbytes"]
    blocks = [per_block.get(i, 0) for i in range(adapted.num_blocks)]
    return {"storage_bytes": sum(blocks), "block_storage_bytes": blocks, "outside_storage_bytes": per_block["outside"],
            "object_bytes": sum(v for k, v in objects.items() if k != "outside"), "storages": len(storages),
            "views": len(views), "partial_storages": sum(not e["covers"] for e in storages.values())}


def fedquad_count(adapted, plan: ClientPlan, batch: dict) -> dict:
    """fedquad's own accounting of the step, and what its policies still reference after backward."""
    with PlanRuntime(adapted, plan) as runtime:
        forward_backward(adapted, runtime, batch)
        blocks = runtime.block_bytes()
        gc.collect()
        retained = sum(p.retained_bytes() for p in [*runtime.policies, runtime.outside])
        adapted.model.zero_grad(set_to_none=True)
    return {"raw_bytes": sum(b.raw_bytes for b in blocks), "block_raw_bytes": [b.raw_bytes for b in blocks],
            "retained_bytes": retained}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 3, 6])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--bits", type=int, choices=[0, 8, 4], default=0,
                   help="quantize every trainable block at these bits for the fedquad step (0: none); the "
                        "independent count is of the unquantized step, so compare raw_bytes only")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    args = p.parse_args()

    adapted = load_model(args.model, with_tokenizer=False)
    adapted.model.train()
    batch = generated_batch(adapted, args.batch_size, args.seq_len)
    rows = []
    for depth in args.depths:
        plan = ClientPlan(depth, 0, 8)
        quantized = ClientPlan(depth, depth, args.bits) if args.bits else plan
        ind, fq = independent_count(adapted, plan, batch), fedquad_count(adapted, quantized, batch)
        rows.append({"depth": depth, **ind, **fq,
                     "relative_difference": fq["raw_bytes"] / ind["storage_bytes"] - 1 if ind["storage_bytes"] else 0.0})
    if args.json:
        print(json.dumps({"model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len,
                          "bits": args.bits, "rows": rows}, indent=2))
        return
    print(f"{args.model}, batch {args.batch_size} x {args.seq_len}, fedquad step at "
          + (f"int{args.bits}" if args.bits else "full precision"))
    print("depth  storage MiB  fedquad raw MiB  diff     per-object MiB  storages views partial  retained MiB")
    for r in rows:
        print(f"{r['depth']:>5}  {r['storage_bytes'] / MiB:>11.2f}  {r['raw_bytes'] / MiB:>15.2f}  "
              f"{100 * r['relative_difference']:>+6.2f}%  {r['object_bytes'] / MiB:>14.2f}  {r['storages']:>8} "
              f"{r['views']:>5} {r['partial_storages']:>7}  {r['retained_bytes'] / MiB:>12.2f}")


if __name__ == "__main__":
    main()
