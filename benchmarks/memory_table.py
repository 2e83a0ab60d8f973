"""Saved-activation memory per (depth, quant_layers, bits): raw vs kept, measured exactly.

Models: all-MiniLM-L6-v2 (batch 16, seq 64) and a LLaMA-style config of realistic width
(hidden 2048, 4 blocks, random init). Also the worst LoRA-gradient cosine per plan.
Goal (issue 2): kept/raw over quantized blocks <= 0.28 for int8, <= 0.15 for int4.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _util import markdown_table, write_doc  # noqa: E402

from fedquad.client import QuantSettings  # noqa: E402
from fedquad.diagnostics.memory import generated_batch, perturb_adapters, probe_memory, reference_step  # noqa: E402
from fedquad.models import load_model  # noqa: E402
from fedquad.models.presets import PRESETS, Preset  # noqa: E402
from fedquad.plan import ClientPlan  # noqa: E402

LLAMA_WIDE = Preset("llama-2048x4", "llama", "LLaMA-style, hidden 2048, 4 blocks (random init)",
                    dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=4,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                         pad_token_id=0))


def table(name, task, batch_size, seq_len):
    adapted = load_model(name, task=task, with_tokenizer=False)
    perturb_adapters(adapted)
    batch = generated_batch(adapted, batch_size, seq_len)
    L = adapted.num_blocks
    rows, worst = [], {8: 0.0, 4: 0.0}
    for depth in range(1, L + 1):
        for bits in (8, 4):
            ref = reference_step(adapted, ClientPlan(depth, 0, bits), batch, QuantSettings(bits=bits))
            for q in range(depth + 1):
                if bits == 4 and q == 0:
                    continue
                r = probe_memory(adapted, ClientPlan(depth, q, bits), batch, QuantSettings(bits=bits), reference=ref)
                qb = [b for b in r.blocks if b["quantized"]]
                q_raw, q_kept = sum(b["raw_bytes"] for b in qb), sum(b["kept_bytes"] for b in qb)
                ratio_q = q_kept / q_raw if q_raw else None
                if ratio_q is not None:
                    worst[bits] = max(worst[bits], ratio_q)
                d = r.to_dict()
                rows.append([depth, q, bits if q else "-", f"{d['raw_bytes'] / 2**20:.2f}", f"{d['kept_bytes'] / 2**20:.2f}",
                             f"{d['kept_ratio']:.3f}", "-" if ratio_q is None else f"{ratio_q:.3f}",
                             f"{d['grad_cosine_min']:.6f}" if d["grad_cosine_min"] is not None else "-"])
                print(name, rows[-1], flush=True)
    header = ["depth", "quant_layers", "bits", "raw MiB", "kept MiB", "kept/raw (all)", "kept/raw (quantized blocks)",
              "worst LoRA grad cosine"]
    return (f"## {adapted.name}: batch {batch_size} x seq {seq_len}, {L} blocks\n\n" + markdown_table(header, rows)
            + f"\n\nWorst kept/raw over quantized blocks: int8 {worst[8]:.3f} (goal <= 0.28), int4 {worst[4]:.3f} "
              f"(goal <= 0.15).\n"), worst


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="MiniLM only")
    args = parser.parse_args()
    PRESETS[LLAMA_WIDE.name] = LLAMA_WIDE
    parts = []
    text, worst = table("minilm", "seq-cls", 16, 64)
    parts.append(text)
    if not args.quick:
        text, worst_llama = table(LLAMA_WIDE.name, "causal-lm", 2, 128)
        parts.append(text)
    path = write_doc("bench_memory.md", "Saved-activation memory: raw vs kept per plan", "\n".join(parts))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
