"""Quantize+dequantize throughput of the activation quantizers, relative to a plain copy.

Why a ratio to ``clone()``: absolute GB/s on a shared 2-core VM swing by 2x between runs; a copy of
the same tensor timed in the same round is the floor any "store it and get it back" scheme is
compared against, and the noise mostly cancels. Every round times every candidate once,
interleaved, each sample right after one untimed call (so all are equally cache-warm); the
reported number is the median over rounds.

    python benchmarks/quant_throughput.py [--repeats 21] [--out docs/bench_quant_throughput.md]
"""

from __future__ import annotations

import argparse
import ctypes
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


def _time(fn, calls: int) -> float:
    fn()  # untimed: the other candidates just evicted this one's data and buffers from L2/L3
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def _calls_for(fn) -> int:
    fn()
    return max(1, int(TARGET_SAMPLE_S / max(_time(fn, 1), 1e-7)))


def _candidates(x: torch.Tensor, bits: int) -> dict[str, tuple]:
    """name -> (quantize+dequantize, quantize only, dequantize only) closures."""
    out = {}
    for name, mod, compiled in (("reference", reference, None), ("fast (compiled)", fast, True),
                                ("fast (eager)", fast, False)):
        def setmode(c=compiled):
            if c is not None:
                fast.use_compile(c)

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
        x = torch.randn(shape)
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
                                 ratio=copy_s / qd))
            fast.use_compile(True)
    return rows


def to_markdown(rows: list[dict], command: str, repeats: int) -> str:
    lines = [
        "# Activation quantizer throughput", "", f"Command: `{command}`", "",
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, {ALLOCATOR}; group_size={GROUP_SIZE}, float32 input; "
        f"median of {repeats} interleaved rounds after warm-up.",
        "", "Throughput = float32 input bytes / (quantize + dequantize time). "
        "`x copy` = copy time / (quantize + dequantize time), copy timed in the same rounds.", "",
        "| threads | shape | bits | implementation | q+d ms | GB/s | x copy | quantize ms | dequantize ms "
        "| copy ms (GB/s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['threads']} | {'x'.join(map(str, r['shape']))} | int{r['bits']} | {r['impl']} | {r['qd_ms']:.3f} | "
                     f"{r['gbs']:.2f} | **{r['ratio']:.2f}** | {r['q_ms']:.3f} | {r['d_ms']:.3f} | "
                     f"{r['copy_ms']:.3f} ({r['copy_gbs']:.1f}) |")
    return "\n".join(lines) + "\n"


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
    args = p.parse_args(argv)
    global ALLOCATOR
    ALLOCATOR = keep_freed_memory()
    command = "python benchmarks/quant_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = [r for n in args.threads.split(",") for r in run(args.repeats, int(n))]
    md = to_markdown(rows, command.strip(), args.repeats)
    print(md)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)


if __name__ == "__main__":
    main()
