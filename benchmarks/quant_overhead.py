"""Step-time overhead of quantizing every trainable block vs none, at full depth.

MiniLM, batch 16 x seq 64, forward + backward. Plans are interleaved round-robin and each
reported time is the median of the repeats, so machine noise hits every plan alike.
Goal (issue 2): <= 1.15x with the fast path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _util import markdown_table, write_doc  # noqa: E402

from fedquad.client import PlanRuntime, QuantSettings, forward_backward  # noqa: E402
from fedquad.diagnostics.memory import generated_batch, perturb_adapters  # noqa: E402
from fedquad.models import load_model  # noqa: E402
from fedquad.plan import ClientPlan  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--model", default="minilm")
    args = parser.parse_args()
    adapted = load_model(args.model, with_tokenizer=False)
    perturb_adapters(adapted)
    adapted.model.train()
    batch = generated_batch(adapted, 16, 64)
    L = adapted.num_blocks
    configs = {"none": (ClientPlan(L), QuantSettings())}
    for quantizer in ("fast", "reference"):
        for bits in (8, 4):
            configs[f"int{bits} {quantizer}"] = (ClientPlan(L, L, bits), QuantSettings(bits=bits, quantizer=quantizer))
    times = {name: [] for name in configs}
    load_before = os.getloadavg()[0]
    for r in range(args.repeats + 2):
        for name, (plan, quant) in configs.items():
            with PlanRuntime(adapted, plan, quant) as runtime:
                start = time.perf_counter()
                forward_backward(adapted, runtime, batch)
                elapsed = time.perf_counter() - start
            for k in runtime.trainable_keys:
                adapted.parameter(k).grad = None
            if r >= 2:
                times[name].append(elapsed)
    load_after = os.getloadavg()[0]
    base = statistics.median(times["none"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append([name, f"{med * 1e3:.1f}", f"{min(ts) * 1e3:.1f} - {max(ts) * 1e3:.1f}", f"{med / base:.3f}"])
        print(f"{name:16s} {med * 1e3:8.1f} ms  {med / base:.3f}x")
    int8 = statistics.median(times["int8 fast"]) / base
    body = (f"{adapted.name}, full depth ({L} blocks, all quantized or none), batch 16 x 64, one forward + backward "
            f"per timing, median of {args.repeats} interleaved repeats after 2 warm-up rounds (the fast path compiles "
            f"its kernels there). Group size 64 (the library default). {torch.get_num_threads()} torch thread(s), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; 1-minute load average "
            f"{load_before:.1f} before and {load_after:.1f} after the run on {os.cpu_count()} cores (other work shared "
            "the machine: read the ratios rather than the absolute times).\n\n"
            + markdown_table(["quantized blocks", "step ms (median)", "min - max ms", "ratio to none"], rows)
            + f"\n\nGoal (issue 2): int8 with the fast path <= 1.15x. Measured: {int8:.3f}x -- "
            + ("met" if int8 <= 1.15 else "**not met**") + ".\n")
    print("wrote", write_doc("bench_quant_overhead.md", "Step-time overhead of activation quantization", body))

if __name__ == "__main__":
    main()
