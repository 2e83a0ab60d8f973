"""Gradient fidelity of quantized saved activations: LoRA-gradient cosine against an unquantized step.

For each model (MiniLM seq-cls, 6 blocks; tiny LLaMA causal-lm, 4 blocks) at full depth, batch
16 x 64, and each batch seed: one unquantized step is the reference, then every case below runs the
same step (same batch, same dropout masks) with some blocks' saved activations quantized. Per case
the table gives the worst and the mean cosine over the LoRA tensors (the task head excluded), the
minimum of each over the seeds, and kept/raw bytes. Deterministic: timing plays no part.

Cases: int8 and int4 x {1, half, all} blocks at bottom placement (the default); top placement for
1 and half the blocks (the placement ablation of docs/design.md, "The client": all blocks is the same set either way);
stochastic rounding for int4 on one block; the linear grid (no sqrt for non-negative tensors) for
int8 and int4, to show what the sqrt grid buys. Targets (docs/design.md, "The client"): int8 >= 0.9999 and
int4 >= 0.98 on every LoRA gradient.
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
from fedquad.plan import ClientPlan  # noqa: E402

MODELS = [("minilm", "seq-cls"), ("tiny-llama", "causal-lm")]
TARGET = {8: 0.9999, 4: 0.98}


def cases(L: int) -> list[tuple[str, ClientPlan, QuantSettings]]:
    out = []
    for bits in (8, 4):
        for q in (1, L // 2, L):
            out.append(("RTN, sqrt grid", ClientPlan(L, q, bits, "bottom"), QuantSettings(bits=bits)))
        for q in (1, L // 2):
            out.append(("RTN, sqrt grid", ClientPlan(L, q, bits, "top"), QuantSettings(bits=bits)))
    out.append(("stochastic, sqrt grid", ClientPlan(L, 1, 4), QuantSettings(bits=4, stochastic=True)))
    for bits in (8, 4):
        for q in (1, L):
            out.append(("RTN, linear grid", ClientPlan(L, q, bits),
                        QuantSettings(bits=bits, sqrt_nonnegative=False)))
    return out


def _short(key: str) -> str:
    """'base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight' -> 'layer.0...query.lora_A'."""
    parts = key.replace(".default", "").replace(".weight", "").split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[i - 1:])
    return key


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if f"{lo:.3f}" == f"{hi:.3f}" else f"{lo:.3f} - {hi:.3f}"


def _blocks(per_seed: list[list[int]]) -> str:
    """Union over seeds of the blocks whose LoRA gradients differ at all from the unquantized step."""
    blocks = sorted(set().union(*map(set, per_seed)))
    if not blocks:
        return "none"
    return f"{blocks[0]}..{blocks[-1]}" if blocks == list(range(blocks[0], blocks[-1] + 1)) and len(blocks) > 1 else ", ".join(map(str, blocks))


def measure(name: str, task: str, seeds: list[int], batch_size: int, seq_len: int):
    adapted = load_model(name, task=task, with_tokenizer=False)
    perturb_adapters(adapted)
    adapted.model.train()  # reference_step does not switch modes; probe_memory does
    L = adapted.num_blocks
    plan_cases = cases(L)
    results = [dict(worst=[], mean=[], worst_key=[], touched=[], ratio=[], ratio_q=[]) for _ in plan_cases]
    for seed in seeds:
        batch = generated_batch(adapted, batch_size, seq_len, seed=seed)
        ref = reference_step(adapted, ClientPlan(L), batch, QuantSettings(), seed)
        for (label, plan, quant), res in zip(plan_cases, results):
            r = probe_memory(adapted, plan, batch, quant, seed=seed, reference=ref)
            lora = {k: c for k, c in r.grad_cosines.items() if "lora_" in k}
            worst = min(lora, key=lora.get)
            res["worst"].append(lora[worst])
            res["worst_key"].append(_short(worst))
            res["mean"].append(sum(lora.values()) / len(lora))
            # containment: which blocks' LoRA gradients changed at all (cosine exactly 1.0 = bit-identical)
            res["touched"].append(sorted({adapted.key_block[k] for k, c in lora.items() if c != 1.0}))
            qb = [b for b in r.blocks if b["quantized"]]
            res["ratio"].append(r.kept_bytes / r.raw_bytes)
            res["ratio_q"].append(sum(b["kept_bytes"] for b in qb) / sum(b["raw_bytes"] for b in qb))
            print(f"{name} seed {seed} {plan.describe():14s} {plan.placement:6s} {label:22s} "
                  f"worst {lora[worst]:.6f} ({_short(worst)}) mean {res['mean'][-1]:.6f} "
                  f"kept/raw {res['ratio'][-1]:.3f} changed blocks {res['touched'][-1]}", flush=True)
    rows = []
    for (label, plan, quant), res in zip(plan_cases, results):
        worst = min(res["worst"])
        target = TARGET[plan.bits]
        at = res["worst"].index(worst)
        quantized = list(plan.quantized_blocks(L))
        blocks = f"{plan.quant_layers} ({quantized[0]}..{quantized[-1]})" if len(quantized) > 1 else f"1 ({quantized[0]})"
        rows.append([f"int{plan.bits}", blocks, plan.placement, label, f"{worst:.6f}",
                     " / ".join(f"{w:.6f}" for w in res["worst"]), f"`{res['worst_key'][at]}`",
                     f"{min(res['mean']):.6f}", _blocks(res["touched"]), _span(res["ratio"]), _span(res["ratio_q"]),
                     "yes" if worst >= target else f"**no** (< {target})"])
    header = ["bits", "quantized blocks", "placement", "rounding, grid", "worst cosine (min over seeds)",
              "worst per seed", "worst tensor (at that seed)", "mean cosine (min over seeds)", "blocks with changed LoRA grads", "kept/raw (all blocks)",
              "kept/raw (quantized blocks)", "meets target"]
    lora_count = len([k for k in adapted.adapter_keys if "lora_" in k])
    return (f"## {adapted.name} ({task}, {L} blocks, full depth, {lora_count} LoRA tensors)\n\n"
            + markdown_table(header, rows) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="batch (and dropout) seeds")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    parts = [
        f"LoRA-gradient cosine of one training step against the unquantized step on the same batch "
        f"(same dropout masks), batch {args.batch_size} x {args.seq_len}, full depth, batch seeds "
        f"{', '.join(map(str, args.seeds))}. *Worst* is the lowest cosine over all LoRA tensors of the "
        f"model (the task head excluded), *mean* their average; both are the minimum over the seeds. "
        f"Blocks are numbered from the input side (0); *bottom* quantizes the lowest trainable blocks "
        f"(FedQuad's default here), *top* the highest. Group size 64, fast quantizer (bit-exact with the "
        f"reference). kept/raw counts the saved-activation bytes of all blocks / of the quantized blocks "
        f"only (a range where it differs between seeds). *Blocks with changed LoRA grads* lists the blocks having at least one LoRA gradient that is not "
        f"bit-identical to the unquantized step (union over seeds): the reach of the quantization error. "
        f"Targets (docs/design.md, \"The client\"): int8 >= 0.9999, int4 >= 0.98 on every LoRA gradient.\n"]
    for name, task in MODELS:
        parts.append(measure(name, task, args.seeds, args.batch_size, args.seq_len))
    path = write_doc("bench_fidelity.md", "Gradient fidelity of quantized saved activations", "\n".join(parts))
    print("wrote", path)


if __name__ == "__main__":
    main()
