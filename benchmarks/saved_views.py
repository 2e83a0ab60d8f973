"""How much of a block's saved activations are repeated views of one tensor (q/k/v inputs).

    .venv/bin/python benchmarks/saved_views.py [--model minilm] [--batch-size 16] [--seq-len 64]

Runs one forward of the model with every LoRA tensor and the head trainable (depth = all blocks,
nothing quantized) under a saved-tensor hook that records every tensor autograd saves. Weights
(matched on storage) are dropped; the rest is grouped twice: by Python object (what
fedquad.client.saved_activations dedups today) and by view (storage, offset, shape, stride,
dtype). The difference is what the accounting counts more than once and what a quantized block
stores more than once. Prints the totals and every repeated view.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from fedquad.models import load_model

MiB = 2 ** 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    args = p.parse_args()

    net = load_model(args.model, with_tokenizer=False).model
    for name, param in net.named_parameters():
        param.requires_grad_("lora" in name or "classifier" in name or "score" in name)
    weights = {param.untyped_storage().data_ptr() for param in net.parameters()}

    saved = {}  # id -> (view key, bytes); holding `t` keeps ids and storages unique for the forward

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            key = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
            saved[id(t)] = (key, t.numel() * t.element_size(), t)
        return t

    tokens = torch.randint(1000, 2000, (args.batch_size, args.seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(input_ids=tokens, attention_mask=torch.ones_like(tokens))

    by_view = defaultdict(list)
    for key, nbytes, _ in saved.values():
        by_view[key].append(nbytes)
    total = sum(nbytes for _, nbytes, _ in saved.values())
    repeated = sum(sizes[0] * (len(sizes) - 1) for sizes in by_view.values())
    print(f"{args.model}, batch {args.batch_size} x {args.seq_len}, float32, every block trainable")
    print(f"distinct saved objects: {len(saved)}, distinct views: {len(by_view)}")
    for (_, _, shape, stride, dtype), sizes in by_view.items():
        if len(sizes) > 1:
            print(f"  {len(sizes)} views {shape} stride {stride} {dtype}: {sizes[0] / MiB:.2f} MiB each")
    print(f"saved bytes counted per object: {total / MiB:.1f} MiB; repeated views: {repeated / MiB:.1f} MiB "
          f"({100 * repeated / total:.1f}%)")


if __name__ == "__main__":
    main()
