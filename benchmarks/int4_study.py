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
  attention probabilities and their dropout masks, "signed" / "nonneg" = everything else).

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
from fedquad.quant.rotation import can_rotate, rotate  # noqa: E402

MODELS = [("minilm", "seq-cls"), ("tiny-llama", "causal-lm")]


@dataclass(frozen=True)
class Scheme:
    """One study candidate (plain PyTorch quantizer below)."""
    group_size: int = 64
    params: str = "float32"  # storage of each group's scale and minimum: float32, float16 or bfloat16
    axis: str = "token"  # "token" or "channel"
    rotate: bool = False  # Hadamard rotation of each group (signed tensors)
    rotate_dc: bool = False  # with the rotation: store each group's DC coefficient apart (float16)
    rotate_auto: bool = False  # with the rotation: per group, rotate only where it narrows the range (1 bit/group)
    rotate_block: int = 0  # rotation block (0 = the group size); smaller blocks cost less
    rotate_kinds: tuple[str, ...] = ()  # if set, rotate only these kinds
    outliers: int = 0  # channels kept at int8
    sqrt: bool = True  # sqrt grid for non-negative tensors
    keep_stats: bool = False  # keep per-token statistics (last dimension 1: LayerNorm mean / rstd)
    keep: tuple[str, ...] = ()  # tensor kinds kept unquantized (prefixes of `kind_of`)
    only: tuple[str, ...] = ()  # if set, quantize only these kinds (a sensitivity probe)
    int8: tuple[str, ...] = ()  # kinds quantized at 8 bits instead (mixed precision)
    position: int = -1  # if >= 0, quantize only the block's n-th distinct saved tensor (--per-tensor)


@dataclass(frozen=True)
class Candidate:
    name: str
    scheme: Scheme | None = None  # None: the library's hooks with `quant`
    quant: QuantSettings = field(default_factory=lambda: QuantSettings(bits=4))


F32, F16, BF16 = "float32", "float16", "bfloat16"
AUTO = dict(rotate=True, rotate_auto=True)
CANDIDATES = [
    Candidate("library g64 (old default)", quant=QuantSettings(bits=4, group_size=64, rotation="off",
                                                               scale_dtype="float32", head_bits=4)),
    Candidate("library g128 (old CLI default)", quant=QuantSettings(bits=4, group_size=128, rotation="off",
                                                                    scale_dtype="float32", head_bits=4)),
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
              quant=QuantSettings(bits=4, group_size=64, rotation="off")),
    Candidate("library default (g64, bf16 scales, head width @ int8, rotation)", quant=QuantSettings(bits=4)),
    Candidate("library default at g32", quant=QuantSettings(bits=4, group_size=32)),
]


# ---- the study quantizer ---------------------------------------------------------------------

def _fp16_params(lo: torch.Tensor, scale: torch.Tensor):
    """Round the minimum down and the scale up to float16, so every code stays within [0, qmax]."""
    lo16, s16 = lo.half(), scale.half()
    lo16 = torch.where(lo16.float() > lo, torch.nextafter(lo16, lo16.new_tensor(-float("inf"))), lo16)
    s16 = torch.where(s16.float() < scale, torch.nextafter(s16, s16.new_tensor(float("inf"))), s16)
    return lo16.float(), s16.float()


def _quant_rows(x: torch.Tensor, bits: int, g: int, params: str):
    """Flat per-group min/max quantize + dequantize; returns (float32 values, bytes kept).

    params: "float32"; "float16" (minimum rounded down and scale up to float16 before the codes are
    computed, float32 where float16 cannot hold them); "bfloat16" (codes from the float32 values, then
    scale and minimum stored rounded to nearest bfloat16: what a hook can do after any quantizer)."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    groups = -(-n // g)
    if groups * g > n:
        flat = torch.cat([flat, flat[-1:].expand(groups * g - n)])
    grid = flat.view(groups, g)
    lo, hi = grid.amin(1), grid.amax(1)
    qmax = (1 << bits) - 1
    scale = (hi - lo) / qmax
    pb = 4 if params == "float32" else 2
    if params == "float16":
        lo2, s2 = _fp16_params(lo, scale)
        # float16 cannot hold it (overflow or a scale in the subnormal range): keep float32 params
        ok = bool(torch.isfinite(lo2).all() and torch.isfinite(s2).all() and (s2[scale > 0] >= 2 ** -14).all())
        if ok:
            lo, scale = lo2, s2
        else:
            pb = 4
    inv = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
    codes = ((grid - lo[:, None]) * inv[:, None]).round().clamp(0, qmax)
    if params == "bfloat16":
        lo, scale = lo.bfloat16().float(), scale.bfloat16().float()
    out = (codes * scale[:, None] + lo[:, None]).reshape(-1)[:n]
    return out.view(x.shape), -(-n * bits // 8) + 2 * pb * groups


def kind_of(t: torch.Tensor, nonneg: bool) -> str:
    """"signed-4d-32": sign, "4d" for head-layout tensors, then the last dimension."""
    return ("nonneg" if nonneg else "signed") + ("-4d" if t.dim() == 4 else "") + f"-{t.shape[-1]}"


def _matches(kind: str, patterns: tuple[str, ...]) -> bool:
    return any(kind == p or kind.startswith(p + "-") for p in patterns)


def study_roundtrip(x: torch.Tensor, s: Scheme, bits: int = 4, kind: str = ""):
    """(dequantized tensor, kept bytes) of one saved activation under scheme ``s``."""
    x32 = x.float()
    nonneg = bool(x32.min() >= 0)
    if s.sqrt and nonneg:
        y, nbytes = _quant_rows(x32.sqrt(), bits, s.group_size, s.params)
        return y.square().to(x.dtype), nbytes
    shape, C = x32.shape, x32.shape[-1]
    work = x32.reshape(-1, C)  # [N, C]
    extra, cols = 0, None
    if s.outliers and C > s.outliers:
        cols = work.abs().amax(0).topk(s.outliers).indices  # [k]
        kept_cols, nb = _quant_rows(work[:, cols].t().contiguous(), 8, s.group_size, s.params)
        extra += nb + 8 * s.outliers
        work = work.clone()
        work[:, cols] = 0
    if s.axis == "channel":
        work = work.t().contiguous()  # [C, N]: groups run along the tokens of one channel
    rb = s.rotate_block or s.group_size
    rotated = s.rotate and can_rotate(work.numel(), rb) and (not s.rotate_kinds or _matches(kind, s.rotate_kinds))
    if rotated:
        plain = work
        work = rotate(work, rb)
        if s.rotate_auto:
            pr, rr = plain.reshape(-1, rb), work.reshape(-1, rb)
            flag = (rr.amax(1) - rr.amin(1)) < (pr.amax(1) - pr.amin(1))  # [G]
            work = torch.where(flag[:, None], rr, pr).view(plain.shape)
            extra += -(-flag.numel() // 8)
        if s.rotate_dc:  # the group mean becomes one large coefficient; keep it apart at float16
            rows = work.reshape(-1, s.group_size)
            dc = rows[:, 0].half().float()
            rows[:, 0] = 0
            extra += 2 * dc.numel()
    y, nbytes = _quant_rows(work, bits, s.group_size, s.params)
    if rotated:
        if s.rotate_dc:
            y = y.clone()
            y.reshape(-1, s.group_size)[:, 0] = dc
        if s.rotate_auto:
            back = rotate(y, rb).reshape(-1, rb)
            y = torch.where(flag[:, None], back, y.reshape(-1, rb)).view(y.shape)
        else:
            y = rotate(y, rb)
    if s.axis == "channel":
        y = y.t()
    y = y.reshape(-1, C)
    if cols is not None:
        y = y.clone()
        y[:, cols] = kept_cols.t()
    return y.reshape(shape).to(x.dtype), nbytes + extra


class _Held:
    __slots__ = ("value",)

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

    def _pack_new(self, t):
        s = StudyPolicy.scheme
        if s is None or self.quant is None or self._skip_reason(t) is not None:
            return super()._pack_new(t)
        raw = t.numel() * t.element_size()
        lo, hi = (float(v) for v in torch.aminmax(t.detach()))
        limit = _huge_limit(t.dtype)
        if not (abs(lo) < limit and abs(hi) < limit):
            return super()._pack_new(t)
        kind = kind_of(t, lo >= 0)
        b = self.bytes
        position = b.tensors
        StudyPolicy.shapes.setdefault(position, (kind, tuple(t.shape)))
        b.raw_bytes += raw
        b.tensors += 1
        if s.keep_stats and t.shape[-1] == 1:
            return self._keep(t, raw, "per-token statistic")
        if _matches(kind, s.keep) or (s.only and not _matches(kind, s.only)) or (0 <= s.position != position):
            return self._keep(t, raw, "kind " + kind)
        value, nbytes = study_roundtrip(t.detach(), s, 8 if _matches(kind, s.int8) else self.quant.bits, kind)
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
    old4 = QuantSettings(bits=4, rotation="off", scale_dtype="float32", head_bits=4)
    configs = {"none": (ClientPlan(L), QuantSettings()),
               "int8 (default)": (ClientPlan(L, L, 8), QuantSettings(bits=8)),
               "int4 old default (fp32 scales)": (ClientPlan(L, L, 4), old4),
               "int4 + bf16 scales": (ClientPlan(L, L, 4), replace(old4, scale_dtype="auto")),
               "int4 + bf16 + head width @ int8": (ClientPlan(L, L, 4), QuantSettings(bits=4, rotation="off")),
               "int4 new default (+ rotation)": (ClientPlan(L, L, 4), QuantSettings(bits=4))}
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
