"""int4 saved activations: which quantization scheme keeps the gradients? Candidates side by side.

Every candidate quantizes the saved activations of *every* trainable block at int4 (full depth)
and is compared with the unquantized step on the same batch and dropout masks, on MiniLM
(seq-cls, pretrained) and the tiny LLaMA (causal-lm, random init), over a few batch seeds.
Per candidate: the worst gradient cosine over all trained tensors (`grad_cosine_min` of
`fedquad memory`), the worst over the seeds and both models; kept/raw bytes of the quantized
blocks (exact, as the hooks count them); and the time spent in the pack + unpack hooks per step.

The candidates (`CANDIDATES`) vary one thing at a time from the scheme the library shipped with
(per-group min/max over consecutive elements of the flattened tensor, float32 scale and minimum,
square-root grid for non-negative tensors):

* group size (32, 64, 128) and the storage of the per-group scale and minimum (float32 or
  float16: 8 or 4 bytes per group, which is what moves kept/raw);
* grouping axis: "token" groups run along the last dimension (the hidden channels of one token),
  "channel" groups run along the tokens, one channel at a time (a per-channel scale);
* a Walsh-Hadamard rotation of each group before quantizing (`fedquad.quant.rotation`), signed
  tensors only (non-negative ones keep the sqrt grid, which a rotation would destroy);
* the k channels of largest magnitude kept at int8 (per-channel groups) and zeroed in the int4 part;
* keeping one kind of tensor unquantized ("signed-4d" = q/k/v in head layout, "nonneg-4d" =
  attention probabilities and their dropout masks, "signed" / "nonneg" = everything else);
* two-valued tensors (CPU dropout masks) as one bit per element, and the n-th saved storage of
  every block at int8 (MiniLM's 18th is the GELU input): the two rules the library now ships.

Study candidates run a plain-PyTorch quantizer written here (so that any axis or storage can be
tried); candidates named "library ..." run the package's own hooks (`QuantSettings`) unchanged,
which is what `fedquad memory` measures. Hook times of study candidates are those of this plain
code, not of an optimised kernel; compare the library rows for what a user pays.

    python benchmarks/int4_study.py [--json] [--seeds 0 1 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace

import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _util import machine_line, markdown_table  # noqa: E402

import fedquad.client.runtime as runtime_module  # noqa: E402
from fedquad.client.saved_activations import QuantSettings, SavedTensorPolicy, _huge_limit  # noqa: E402
from fedquad.diagnostics.memory import generated_batch, perturb_adapters, probe_memory, reference_step  # noqa: E402
from fedquad.models import load_model  # noqa: E402
from fedquad.plan import ClientPlan  # noqa: E402
from _int4_schemes import Scheme, _matches, kind_of, study_roundtrip  # noqa: E402

MODELS = [("minilm", "seq-cls"), ("tiny-llama", "causal-lm")]


@dataclass(frozen=True)
class Candidate:
    name: str
    scheme: Scheme | None = None  # None: the library's hooks with `quant`
    quant: QuantSettings = field(default_factory=lambda: QuantSettings(bits=4))


F32, F16, BF16 = "float32", "float16", "bfloat16"
AUTO = dict(rotate=True, rotate_auto=True)
HEAD8 = ("signed-32", "signed-4d-16")  # the head width of MiniLM (32) and of the tiny LLaMA (16)
OLD = dict(activation_bits=4, two_valued=False)  # library rows from before these two rules
CANDIDATES = [
    Candidate("library g64 (old default)", quant=QuantSettings(bits=4, group_size=64, rotation="off",
                                                               scale_dtype="float32", head_bits=4, **OLD)),
    Candidate("library g128 (old CLI default)", quant=QuantSettings(bits=4, group_size=128, rotation="off",
                                                                    scale_dtype="float32", head_bits=4, **OLD)),
    Candidate("g64 fp32", Scheme(64)),
    Candidate("g64 fp16", Scheme(64, F16)),
    Candidate("g64 bf16", Scheme(64, BF16)),
    Candidate("g32 bf16", Scheme(32, BF16)),
    Candidate("g128 bf16", Scheme(128, BF16)),
    Candidate("g64 bf16 channel axis", Scheme(64, BF16, axis="channel")),
    Candidate("g64 bf16 linear grid", Scheme(64, BF16, sqrt=False)),
    Candidate("g64 bf16 outliers 4 @ int8", Scheme(64, BF16, outliers=4)),
    Candidate("g64 bf16 rotated", Scheme(64, BF16, rotate=True)),
    Candidate("g64 bf16 rotated, DC apart", Scheme(64, BF16, rotate=True, rotate_dc=True)),
    Candidate("g64 bf16 rotated per group", Scheme(64, BF16, **AUTO)),
    Candidate("g32 bf16 rotated per group", Scheme(32, BF16, **AUTO)),
    Candidate("g128 bf16 rotated per group", Scheme(128, BF16, **AUTO)),
    Candidate("g64 bf16 keep stats", Scheme(64, BF16, keep_stats=True)),
    Candidate("g64 bf16 rotated per group, keep stats", Scheme(64, BF16, **AUTO, keep_stats=True)),
    Candidate("g64 fp32 rotated per group, keep stats", Scheme(64, F32, **AUTO, keep_stats=True)),
    Candidate("g64 bf16, keep signed-4d", Scheme(64, BF16, keep=("signed-4d",))),
    Candidate("g64 bf16, keep nonneg-4d", Scheme(64, BF16, keep=("nonneg-4d",))),
    Candidate("g64 bf16, keep nonneg", Scheme(64, BF16, keep=("nonneg",))),
    Candidate("g64 bf16, keep signed", Scheme(64, BF16, keep=("signed",))),
    Candidate("g64 bf16 rotated per group, signed-4d @ int8", Scheme(64, BF16, **AUTO, int8=("signed-4d",))),
    Candidate("g64 bf16 rotated per group, head-dim tensors @ int8 (study)",
              Scheme(64, BF16, **AUTO, int8=("signed-32", "signed-4d-16"))),
    Candidate("g64 bf16 rotated per block of 16, head-dim @ int8 (study)",
              Scheme(64, BF16, **AUTO, rotate_block=16, int8=("signed-32", "signed-4d-16"))),
    Candidate("g64 bf16 rotated per block of 32, head-dim @ int8 (study)",
              Scheme(64, BF16, **AUTO, rotate_block=32, int8=("signed-32", "signed-4d-16"))),
    Candidate("g64 bf16 rotated hidden-width only, head-dim @ int8 (study)",
              Scheme(64, BF16, **AUTO, rotate_kinds=("signed-384", "signed-64"), int8=("signed-32", "signed-4d-16"))),
    Candidate("g64 bf16, head-dim @ int8, no rotation (study)", Scheme(64, BF16, int8=("signed-32", "signed-4d-16"))),
    Candidate("g64 bf16 rotated per group, all 4-d @ int8", Scheme(64, BF16, **AUTO, int8=("signed-4d", "nonneg-4d"))),
    Candidate("library g64, bf16 scales, head width @ int8, no rotation",
              quant=QuantSettings(bits=4, group_size=64, rotation="off", **OLD)),
    Candidate("library, previous rules (g64, bf16 scales, head width @ int8, rotation)",
              quant=QuantSettings(bits=4, **OLD)),
    Candidate("library default (previous + activation input @ int8, two-valued as bits)", quant=QuantSettings(bits=4)),
    Candidate("library default at g32", quant=QuantSettings(bits=4, group_size=32)),
    Candidate("library default at g128", quant=QuantSettings(bits=4, group_size=128)),
    # after storage-exact dedup (issue 10): two-valued tensors (CPU dropout masks) at one bit each
    Candidate("g64 bf16 rotated per group, head-dim @ int8, two-valued as bits (study)",
              Scheme(64, BF16, **AUTO, int8=HEAD8, two_valued_bits=True)),
    Candidate("g64 bf16 rotated per group, head-dim @ int8, two-valued as bits, MiniLM GELU input @ int8 (study)",
              Scheme(64, BF16, **AUTO, int8=HEAD8, two_valued_bits=True, int8_positions=(18,))),
    Candidate("g32 bf16 rotated per group, head-dim @ int8, two-valued as bits (study)",
              Scheme(32, BF16, **AUTO, int8=HEAD8, two_valued_bits=True)),
]


class _Held:
    __slots__ = ("value", "__weakref__")  # weak-referencable: the policy's storage dedup keeps weak references

    def __init__(self, value):
        self.value = value


class StudyPolicy(SavedTensorPolicy):
    """The library's policy (skip rules, dedup, accounting) with a study quantizer, and timers."""

    scheme: Scheme | None = None
    hook_s: float = 0.0
    shapes: dict = {}  # position in the block -> (kind, shape) of the saved tensors seen
    kinds: dict

    def pack(self, t):
        start = time.perf_counter()
        try:
            return super().pack(t)
        finally:
            StudyPolicy.hook_s += time.perf_counter() - start

    def unpack(self, packed):
        start = time.perf_counter()
        try:
            if isinstance(packed, _Held):
                return packed.value
            return super().unpack(packed)
        finally:
            StudyPolicy.hook_s += time.perf_counter() - start

    def _pack_new(self, t, entry, storage_nbytes):
        s = StudyPolicy.scheme
        if s is None or self.quant is None or self._skip_reason(t, storage_nbytes) is not None:
            return super()._pack_new(t, entry, storage_nbytes)
        lo, hi = (float(v) for v in torch.aminmax(t.detach()))
        limit = _huge_limit(t.dtype)
        if not (abs(lo) < limit and abs(hi) < limit):
            return super()._pack_new(t, entry, storage_nbytes)
        kind = kind_of(t, lo >= 0)
        b = self.bytes
        position = b.tensors - 1  # the policy counted this storage already: n-th distinct storage
        StudyPolicy.shapes.setdefault(position, (kind, tuple(t.shape)))
        if s.keep_stats and t.shape[-1] == 1:
            return self._keep(t, entry, storage_nbytes, "per-token statistic")
        if _matches(kind, s.keep) or (s.only and not _matches(kind, s.only)) or (0 <= s.position != position):
            return self._keep(t, entry, storage_nbytes, "kind " + kind)
        bits = 8 if _matches(kind, s.int8) or position in s.int8_positions else self.quant.bits
        value, nbytes = study_roundtrip(t.detach(), s, bits, kind)
        b.kept_bytes += nbytes  # the study keeps the dequantized value; it charges what a store would hold
        b.quantized_tensors += 1
        return _Held(value)


@contextlib.contextmanager
def installed(scheme: Scheme | None):
    saved = runtime_module.SavedTensorPolicy
    runtime_module.SavedTensorPolicy = StudyPolicy
    StudyPolicy.scheme, StudyPolicy.hook_s = scheme, 0.0
    try:
        yield
    finally:
        runtime_module.SavedTensorPolicy = saved
        StudyPolicy.scheme = None


def measure(candidates: list[Candidate], seeds: list[int], batch_size: int, seq_len: int, progress=print) -> list[dict]:
    rows = {c.name: {"candidate": c.name, "per_model": {}} for c in candidates}
    for name, task in MODELS:
        adapted = load_model(name, task=task, with_tokenizer=False)
        perturb_adapters(adapted)
        L = adapted.num_blocks
        plan = ClientPlan(L, L, 4)
        for seed in seeds:
            batch = generated_batch(adapted, batch_size, seq_len, seed=seed)
            adapted.model.train()
            ref = reference_step(adapted, plan, batch, QuantSettings(bits=4), seed)
            for c in candidates:
                with installed(c.scheme):
                    r = probe_memory(adapted, plan, batch, c.quant, seed=seed, reference=ref)
                    hook_s = StudyPolicy.hook_s
                d = r.to_dict()
                lora = [v for k, v in r.grad_cosines.items() if "lora_" in k]
                m = rows[c.name]["per_model"].setdefault(name, {"grad_cosine_min": [], "lora_cosine_min": [],
                                                                "kept_ratio": [], "hook_ms": [], "step_ms": []})
                m["grad_cosine_min"].append(d["grad_cosine_min"])
                m["lora_cosine_min"].append(min(lora))
                m["kept_ratio"].append(d["kept_ratio"])
                m["hook_ms"].append(hook_s * 1e3)
                m["step_ms"].append(r.step_s * 1e3)
                progress(f"{name} seed {seed} {c.name:32s} grad_cosine_min {d['grad_cosine_min']:.5f} "
                         f"kept/raw {d['kept_ratio']:.4f} hooks {hook_s * 1e3:.0f} ms")
    out = []
    for c in candidates:
        row = rows[c.name]
        pm = row["per_model"]
        row["grad_cosine_min"] = min(min(m["grad_cosine_min"]) for m in pm.values())
        for model, m in pm.items():
            m["worst"] = min(m["grad_cosine_min"])
            m["kept_ratio_max"] = max(m["kept_ratio"])
            m["hook_ms_median"] = sorted(m["hook_ms"])[len(m["hook_ms"]) // 2]
        out.append(row)
    return out


def step_times(repeats: int, batch_size: int, seq_len: int, model: str = "minilm") -> dict:
    """Forward + backward time and the time inside the pack/unpack hooks, per library setting (MiniLM,
    full depth, every block quantized), interleaved round-robin. Reports the median and the fastest of
    the repeats: on a shared machine other load only ever slows a step down."""
    import statistics

    from fedquad.client import PlanRuntime, forward_backward
    from fedquad.quant import warm_up
    adapted = load_model(model, with_tokenizer=False)
    perturb_adapters(adapted)
    adapted.model.train()
    L = adapted.num_blocks
    batch = generated_batch(adapted, batch_size, seq_len)
    old4 = QuantSettings(bits=4, rotation="off", scale_dtype="float32", head_bits=4, activation_bits=4, two_valued=False)
    configs = {"none": (ClientPlan(L), QuantSettings()),
               "int8 (default)": (ClientPlan(L, L, 8), QuantSettings(bits=8)),
               "int4 old default (fp32 scales)": (ClientPlan(L, L, 4), old4),
               "int4 + bf16 scales": (ClientPlan(L, L, 4), replace(old4, scale_dtype="auto")),
               "int4 + bf16 + head width @ int8": (ClientPlan(L, L, 4), replace(old4, scale_dtype="auto", head_bits=8)),
               "int4 + rotation (previous default)": (ClientPlan(L, L, 4),
                                                      QuantSettings(bits=4, activation_bits=4, two_valued=False)),
               "int4 default (+ activation input @ int8, two-valued as bits)": (ClientPlan(L, L, 4), QuantSettings(bits=4))}
    for bits in (8, 4):
        warm_up("auto", bits, 64)
    steps, hooks = {n: [] for n in configs}, {n: [] for n in configs}
    with installed(None):
        for r in range(repeats + 1):
            for name, (plan, quant) in configs.items():
                with PlanRuntime(adapted, plan, quant) as runtime:
                    StudyPolicy.hook_s = 0.0
                    start = time.perf_counter()
                    forward_backward(adapted, runtime, batch)
                    elapsed = time.perf_counter() - start
                for k in runtime.trainable_keys:
                    adapted.parameter(k).grad = None
                if r:  # round 0 warms caches and the allocator
                    steps[name].append(elapsed)
                    hooks[name].append(StudyPolicy.hook_s)
    base, base_min = statistics.median(steps["none"]), min(steps["none"])
    return {n: {"step_ms": statistics.median(ts) * 1e3, "ratio": statistics.median(ts) / base,
                "ratio_fastest": min(ts) / base_min, "hooks_ms": statistics.median(hooks[n]) * 1e3,
                "hooks_ms_fastest": min(hooks[n]) * 1e3} for n, ts in steps.items()}


def per_tensor(seed: int, batch_size: int, seq_len: int, progress=print) -> list[dict]:
    """Sensitivity: grad_cosine_min when only the n-th saved tensor of every block is int4 (group 64,
    bfloat16 scales, no exception), all other tensors exact; one batch seed, both models."""
    out = []
    for name, task in MODELS:
        adapted = load_model(name, task=task, with_tokenizer=False)
        perturb_adapters(adapted)
        L = adapted.num_blocks
        plan = ClientPlan(L, L, 4)
        batch = generated_batch(adapted, batch_size, seq_len, seed=seed)
        adapted.model.train()
        ref = reference_step(adapted, plan, batch, QuantSettings(bits=4), seed)
        StudyPolicy.shapes = {}
        with installed(Scheme(64, "bfloat16")):
            probe_memory(adapted, plan, batch, QuantSettings(bits=4), seed=seed, reference=ref)
        seen = dict(StudyPolicy.shapes)
        for position, (kind, shape) in sorted(seen.items()):
            with installed(Scheme(64, "bfloat16", position=position)):
                r = probe_memory(adapted, plan, batch, QuantSettings(bits=4), seed=seed, reference=ref)
            row = {"model": name, "position": position, "kind": kind, "shape": list(shape),
                   "grad_cosine_min": r.to_dict()["grad_cosine_min"]}
            progress(f"{name} #{position} {kind} {shape}: {row['grad_cosine_min']:.4f}")
            out.append(row)
    return out


def table(rows: list[dict]) -> str:
    header = ["candidate", "grad_cosine_min (worst)", "MiniLM worst", "tiny LLaMA worst",
              "MiniLM kept/raw", "tiny LLaMA kept/raw", "MiniLM pack+unpack ms/step"]
    body = []
    for r in rows:
        pm = r["per_model"]
        mi, tl = pm.get("minilm", {}), pm.get("tiny-llama", {})
        body.append([r["candidate"], f"{r['grad_cosine_min']:.4f}", f"{mi.get('worst', float('nan')):.4f}",
                     f"{tl.get('worst', float('nan')):.4f}", f"{mi.get('kept_ratio_max', float('nan')):.4f}",
                     f"{tl.get('kept_ratio_max', float('nan')):.4f}", f"{mi.get('hook_ms_median', float('nan')):.0f}"])
    return markdown_table(header, body)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="batch and dropout seeds")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--only", nargs="+", help="candidate names (substring match)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--per-tensor", action="store_true",
                    help="instead: quantize one saved tensor of every block at a time (first --seeds value)")
    ap.add_argument("--timing", type=int, metavar="REPEATS", default=0,
                    help="instead: step time of the library's int4 storage options (MiniLM), median of REPEATS")
    args = ap.parse_args()
    if args.per_tensor:
        rows = per_tensor(args.seeds[0], args.batch_size, args.seq_len, progress=(lambda s: print(s, file=sys.stderr)))
        print(json.dumps(rows, indent=1) if args.json else markdown_table(
            ["model", "position in block", "kind", "shape", "grad_cosine_min, only this tensor int4"],
            [[r["model"], r["position"], r["kind"], "x".join(map(str, r["shape"])), f"{r['grad_cosine_min']:.4f}"]
             for r in rows]))
        return
    if args.timing:
        out = step_times(args.timing, args.batch_size, args.seq_len)
        print(json.dumps({"machine": machine_line(), "steps": out}, indent=1) if args.json else
              markdown_table(["setting", "step ms (median)", "ratio to none (medians)", "ratio (fastest steps)",
                              "pack+unpack ms (median)", "pack+unpack ms (fastest)"],
                             [[n, f"{v['step_ms']:.1f}", f"{v['ratio']:.3f}", f"{v['ratio_fastest']:.3f}",
                               f"{v['hooks_ms']:.0f}", f"{v['hooks_ms_fastest']:.0f}"] for n, v in out.items()]))
        return
    todo = [c for c in CANDIDATES if not args.only or any(o in c.name for o in args.only)]
    rows = measure(todo, args.seeds, args.batch_size, args.seq_len,
                   progress=(lambda s: print(s, file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps({"machine": machine_line(), "batch_size": args.batch_size, "seq_len": args.seq_len,
                          "seeds": args.seeds, "candidates": rows}, indent=1))
    else:
        print(table(rows))


if __name__ == "__main__":
    main()
