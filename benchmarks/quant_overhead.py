"""Step-time overhead of quantizing every trainable block vs none, at full depth.

MiniLM, batch 16 x seq 64, forward + backward. Plans are interleaved round-robin and each
reported time is the median of the repeats, so machine noise hits every plan alike. The
quantizer kernels are built/compiled before the first round (time reported apart), then 2
untimed warm-up rounds. Goals (issue 11): int8 <= 1.10x, int4 <= 1.15x with the fast path.

    python benchmarks/quant_overhead.py [--repeats 15] [--json] [--no-reference]

``--json`` prints {"int8_step_overhead": x, "int4_step_overhead": y, ...} on stdout and writes
no doc; without it the table goes to docs/bench_quant_overhead.md.
"""

from __future__ import annotations

import argparse
import json
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
from fedquad.quant import fast, warm_up  # noqa: E402

WARMUP_ROUNDS = 2
GOALS = {8: 1.10, 4: 1.15}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: str, repeats: int, with_reference: bool, batch_size: int = 16, seq_len: int = 64,
            device: str = "cpu") -> dict:
    adapted = load_model(model, with_tokenizer=False, device=device)
    perturb_adapters(adapted)
    adapted.model.train()
    batch = generated_batch(adapted, batch_size, seq_len)
    L = adapted.num_blocks
    configs = {"none": (ClientPlan(L), QuantSettings())}
    for quantizer in ("fast", "reference") if with_reference else ("fast",):
        for bits in (8, 4):
            configs[f"int{bits} {quantizer}"] = (ClientPlan(L, L, bits), QuantSettings(bits=bits, quantizer=quantizer))
    if "rotation" in QuantSettings.__dataclass_fields__:  # the int4 default rotates; show the kernels alone too
        configs["int4 fast, rotation off"] = (ClientPlan(L, L, 4), QuantSettings(bits=4, rotation="off"))
    compile_s = sum(warm_up(q.quantizer, q.bits, q.group_size, q.stochastic, adapted.device)
                    for p, q in configs.values() if p.quant_layers)
    times = {name: [] for name in configs}
    load_before = os.getloadavg()[0]
    for r in range(repeats + WARMUP_ROUNDS):
        for name, (plan, quant) in configs.items():
            with PlanRuntime(adapted, plan, quant) as runtime:
                _sync(adapted.device)
                start = time.perf_counter()
                forward_backward(adapted, runtime, batch)
                _sync(adapted.device)
                elapsed = time.perf_counter() - start
            for k in runtime.trainable_keys:
                adapted.parameter(k).grad = None
            if r >= WARMUP_ROUNDS:
                times[name].append(elapsed)
    base = statistics.median(times["none"])
    backend = fast.backend()
    if adapted.device.type == "cuda":
        from fedquad.quant import triton_kernels
        backend = "triton" if triton_kernels.available() else "eager"
    return {"model": adapted.name, "blocks": L, "batch_size": batch_size, "seq_len": seq_len, "repeats": repeats,
            "device": str(adapted.device), "threads": torch.get_num_threads(), "fast_backend": backend, "compile_s": compile_s,
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "step_ms": {n: statistics.median(ts) * 1e3 for n, ts in times.items()},
            "range_ms": {n: (min(ts) * 1e3, max(ts) * 1e3) for n, ts in times.items()},
            "ratio": {n: statistics.median(ts) / base for n, ts in times.items()},
            # best-of-rounds: other load only ever slows a step down
            "ratio_min": {n: min(ts) / min(times["none"]) for n, ts in times.items()}}


def summary(m: dict) -> dict:
    out = {"int8_step_overhead": m["ratio"]["int8 fast"], "int4_step_overhead": m["ratio"]["int4 fast"]}
    if "int8 reference" in m["ratio"]:
        out |= {"int8_reference_step_overhead": m["ratio"]["int8 reference"],
                "int4_reference_step_overhead": m["ratio"]["int4 reference"]}
    if "int4 fast, rotation off" in m["ratio"]:
        out["int4_step_overhead_rotation_off"] = m["ratio"]["int4 fast, rotation off"]
    out["best_of_rounds"] = {k: m["ratio_min"][n] for k, n in (("int8_step_overhead", "int8 fast"),
                                                               ("int4_step_overhead", "int4 fast"))}
    return out | {"unquantized_step_ms": m["step_ms"]["none"], "model": m["model"], "device": m["device"],
                  "blocks": m["blocks"],
                  "batch": [m["batch_size"], m["seq_len"]], "repeats": m["repeats"], "threads": m["threads"],
                  "fast_backend": m["fast_backend"], "compile_s": m["compile_s"],
                  "load_average": [m["load_before"], m["load_after"]]}


def to_doc(m: dict) -> str:
    rows = [[n, f"{m['step_ms'][n]:.1f}", "%.1f - %.1f" % m["range_ms"][n], f"{m['ratio'][n]:.3f}",
             f"{m['ratio_min'][n]:.3f}"] for n in m["ratio"]]
    verdicts = []
    for bits, goal in GOALS.items():
        x = m["ratio"][f"int{bits} fast"]
        verdicts.append(f"int{bits} {x:.3f}x (goal <= {goal:.2f}x: {'met' if x <= goal else '**not met**'})")
    return (f"{m['model']}, full depth ({m['blocks']} blocks, all quantized or none), batch {m['batch_size']} x "
            f"{m['seq_len']}, one forward + backward per timing, median of {m['repeats']} interleaved repeats after "
            f"{WARMUP_ROUNDS} warm-up rounds; the fast path's kernels (backend: {m['fast_backend']}) were built "
            f"before the first round in {m['compile_s']:.2f} s. Group size 64 (the library default). "
            f"{m['threads']} torch thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
            f"1-minute load average {m['load_before']:.1f} before and {m['load_after']:.1f} after the run on "
            f"{os.cpu_count()} cores (other work shared the machine: read the ratios rather than the absolute "
            "times).\n\n" + markdown_table(["quantized blocks", "step ms (median)", "min - max ms", "ratio to none (medians)",
                              "ratio of the fastest steps"], rows)
            + "\n\nFast path: " + "; ".join(verdicts) + ".\n\nSummary (what `--json` prints):\n\n```json\n"
            + json.dumps(summary(m), indent=2) + "\n```\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed interleaved rounds (median reported)")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference quantizer's rows")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout; write no doc")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args(argv)
    m = measure(args.model, args.repeats, not args.no_reference, args.batch_size, args.seq_len, args.device)
    if args.json:
        print(json.dumps(summary(m), indent=2))
        return
    for n, r in m["ratio"].items():
        print(f"{n:24s} {m['step_ms'][n]:8.1f} ms  {r:.3f}x")
    print("wrote", write_doc("bench_quant_overhead.md", "Step-time overhead of activation quantization", to_doc(m)))


if __name__ == "__main__":
    main()
