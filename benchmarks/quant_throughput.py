"""Quantize+dequantize throughput of the activation quantizers, relative to a plain copy.

Why a ratio to ``clone()``: absolute GB/s on a shared 2-core VM swing by 2x between runs; a copy of
the same tensor timed in the same round is the floor any "store it and get it back" scheme is
compared against, and the noise mostly cancels. Every round times every candidate once,
interleaved, each sample right after one untimed call (so all are equally cache-warm); the
reported number is the median over rounds.

    python benchmarks/quant_throughput.py [--repeats 21] [--out docs/bench_quant_throughput.md] [--json]

``--json`` prints {"int8_fast_vs_copy": x, "int4_fast_vs_copy": y, ...} on stdout instead of the
table (medians on the larger shape, at the first --threads count; "fast" = the path the library
takes by default, see "fast_backend") and writes no doc.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fedquad.quant import fast, reference

SHAPES = [(16, 64, 384), (16, 128, 2048)]
BITS = (8, 4)
GROUP_SIZE = 128
ALLOCATOR = "system malloc defaults"
TARGET_SAMPLE_S = 2e-3  # small tensors are timed in batches of calls so the timer is not the noise


DEVICE = torch.device("cpu")
LOAD = os.getloadavg()


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, calls: int) -> float:
    fn()  # untimed: the other candidates just evicted this one's data and buffers from L2/L3
    _sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync()
    return (time.perf_counter() - t0) / calls


def _calls_for(fn) -> int:
    fn()
    return max(1, int(TARGET_SAMPLE_S / max(_time(fn, 1), 1e-7)))


def _candidates(x: torch.Tensor, bits: int) -> dict[str, tuple]:
    """name -> (quantize+dequantize, quantize only, dequantize only) closures."""
    out = {}
    if x.device.type == "cuda":  # (native, compile, triton) switches
        modes = [("reference", reference, None), ("fast (eager)", fast, (False, False, False))]
        from fedquad.quant import triton_kernels
        if triton_kernels.available():
            modes.insert(1, ("fast (triton)", fast, (False, False, True)))
    else:
        modes = [("reference", reference, None), ("fast (compiled)", fast, (False, True, False)),
                 ("fast (eager)", fast, (False, False, False))]
        if fast.cpu_ext.available():
            modes.insert(1, ("fast (native)", fast, (True, True, False)))
    for name, mod, mode in modes:
        def setmode(c=mode):
            if c is not None:
                fast.use_native(c[0])
                fast.use_compile(c[1])
                fast.use_triton(c[2])

        def qd(m=mod, s=setmode):
            s()
            return m.dequantize(m.quantize(x, bits, GROUP_SIZE))

        setmode()
        q0 = mod.quantize(x, bits, GROUP_SIZE)
        out[name] = (qd, lambda m=mod, s=setmode: (s(), m.quantize(x, bits, GROUP_SIZE)),
                     lambda m=mod, s=setmode, q=q0: (s(), m.dequantize(q)))
    return out


def run(repeats: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for shape in SHAPES:
        x = torch.randn(shape, device=DEVICE)
        for bits in BITS:
            cands = _candidates(x, bits)
            timers = {"copy": (x.clone, None, None)} | cands
            calls = {k: [_calls_for(f) if f else 0 for f in fs] for k, fs in timers.items()}
            samples = {k: ([], [], []) for k in timers}
            for _ in range(repeats):  # interleaved rounds
                for k, fs in timers.items():
                    for i, f in enumerate(fs):
                        if f is not None:
                            samples[k][i].append(_time(f, calls[k][i]))
            copy_s = statistics.median(samples["copy"][0])
            for k in cands:
                qd, q, d = (statistics.median(s) for s in samples[k])
                rows.append(dict(shape=shape, bits=bits, impl=k, threads=threads, qd_ms=qd * 1e3, q_ms=q * 1e3, d_ms=d * 1e3,
                                 gbs=x.nbytes / qd / 1e9, copy_ms=copy_s * 1e3, copy_gbs=x.nbytes / copy_s / 1e9,
                                 ratio=copy_s / qd,
                                 # best-of-rounds: other load only ever slows a sample down
                                 ratio_min=min(samples["copy"][0]) / min(samples[k][0])))
            fast.use_native(True)
            fast.use_compile(True)
            fast.use_triton(True)
    return rows


def to_markdown(rows: list[dict], command: str, repeats: int) -> str:
    lines = [
        "# Activation quantizer throughput", "", f"Command: `{command}`", "",
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, {ALLOCATOR}; group_size={GROUP_SIZE}, float32 input; "
        f"median of {repeats} interleaved rounds after warm-up. 1-minute load average {LOAD[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores: other jobs shared the machine, so read "
        "the ratios (measured side by side, round by round) rather than the absolute times.",
        "", "Throughput = float32 input bytes / (quantize + dequantize time). "
        "`x copy` = copy time / (quantize + dequantize time), medians, copy timed in the same rounds; "
        "`best rounds` = the same ratio of the fastest samples (other load only slows a sample down).", "",
        "| threads | shape | bits | implementation | q+d ms | GB/s | x copy | x copy, best rounds | quantize ms "
        "| dequantize ms | copy ms (GB/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['threads']} | {'x'.join(map(str, r['shape']))} | int{r['bits']} | {r['impl']} | {r['qd_ms']:.3f} | "
                     f"{r['gbs']:.2f} | **{r['ratio']:.2f}** | {r['ratio_min']:.2f} | {r['q_ms']:.3f} | {r['d_ms']:.3f} | "
                     f"{r['copy_ms']:.3f} ({r['copy_gbs']:.1f}) |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> dict:
    """Ratios to copy on the larger shape: at the first thread count, then per thread count."""
    impls = {r["impl"] for r in rows}
    default = next(i for i in ("fast (native)", "fast (triton)", "fast (compiled)", "fast (eager)") if i in impls)
    names = {"fast": default, "native": "fast (native)", "triton": "fast (triton)", "compiled": "fast (compiled)",
             "eager": "fast (eager)", "reference": "reference"}

    def pick(threads):
        big = [r for r in rows if r["shape"] == SHAPES[-1] and r["threads"] == threads]
        out = {}
        for key, impl in names.items():
            for r in big:
                if r["impl"] == impl:
                    out[f"int{r['bits']}_{key}_vs_copy"] = r["ratio"]
        return out

    def pick_min(threads):
        return {k: r["ratio_min"] for k, impl in (("int8_fast_vs_copy", default), ("int4_fast_vs_copy", default))
                for r in rows if r["shape"] == SHAPES[-1] and r["threads"] == threads and r["impl"] == impl
                and k.startswith(f"int{r['bits']}")}

    thread_counts = list(dict.fromkeys(r["threads"] for r in rows))
    return pick(thread_counts[0]) | {
        "fast_backend": default, "device": str(DEVICE), "shape": list(SHAPES[-1]), "group_size": GROUP_SIZE,
        "threads": thread_counts[0], "by_threads": {str(t): pick(t) for t in thread_counts},
        "best_of_rounds": {str(t): pick_min(t) for t in thread_counts}}


def keep_freed_memory() -> str:
    """Stop glibc from unmapping freed multi-MB blocks. Otherwise every 16 MB allocation (the copy's
    and the quantizer's alike) may page-fault afresh, and that cost -- 10x the copy itself on this VM,
    and erratic -- would be what the table measures. (PyTorch's GPU caching allocator does the same.)"""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 1 << 30)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        return "glibc mallopt: mmap threshold 32 MiB, no trimming" if ok else "system malloc defaults"
    except OSError:
        return "system malloc defaults"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=21, help="interleaved timing rounds (median reported)")
    p.add_argument("--threads", default=f"{torch.get_num_threads()},1",
                   help="comma-separated torch intra-op thread counts, one table section each")
    p.add_argument("--out", default="docs/bench_quant_throughput.md", help="markdown file to write")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout; write no doc")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on cuda --threads is ignored)")
    args = p.parse_args(argv)
    global ALLOCATOR, DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        args.threads = str(torch.get_num_threads())
    ALLOCATOR = keep_freed_memory() if DEVICE.type == "cpu" else "CUDA caching allocator"
    command = "python benchmarks/quant_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = [r for n in args.threads.split(",") for r in run(args.repeats, int(n))]
    if args.json:
        print(json.dumps(summary(rows), indent=2))
        return
    md = to_markdown(rows, command.strip(), args.repeats)
    md += "\nSummary (what `--json` prints):\n\n```json\n" + json.dumps(summary(rows), indent=2) + "\n```\n"
    print(md)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)


if __name__ == "__main__":
    main()
