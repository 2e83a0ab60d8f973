"""The profile at another batch shape (batch size x padded length): what the cost model charges
a batch that is not the one the profile was measured with.

Every byte and time field of a profile is, per example, a function of the length s; across
examples it adds up, so it is linear in the batch size B. Attention makes part of it quadratic in
s (BERT's eager attention saves the B x heads x s x s probabilities; the math attention kernel
too; their FLOPs are quadratic in s for every kernel). So each field f is modelled as

    f(B, s) = B * (a * s + b * s^2),      a, b >= 0

fitted per field (per block, per bits) by least squares to the profile's measurements at its
lengths (the profiled `seq_len` and `lengths[*].seq_len`, all at the profiled batch size). With one
length there is nothing to fit b from: b = 0 and f scales with the tokens B * s. With two lengths
the fit is exact; with three or more it is a least-squares fit whose residual is what the
benchmark (benchmarks/step_peak.py) reports. A term that would come out negative (noise on a time)
is dropped and the other refitted, so a field never shrinks as the batch grows. Terms that do not
scale with B (rotary tables: s x head_dim elements) are a few KB and are charged per example.

`profile_at(profile, B, s)` builds that Profile once; costmodel/model.py caches the CostModel of
each shape, so the planner's per-plan queries stay O(1). Pure Python: no torch.
"""

from __future__ import annotations

import dataclasses

from fedquad.costmodel.profile import PROFILE_BITS, BlockProfile, HeadProfile, Profile
from fedquad.errors import FedquadError


def fit_length_terms(lengths: list[int], values: list[float]) -> tuple[float, float]:
    """(a, b) >= 0 minimising sum_k (a s_k + b s_k^2 - v_k)^2 / v_k^2 (relative error, so short
    and long lengths weigh alike); values are per example."""
    pts = [(float(s), float(v)) for s, v in zip(lengths, values)]
    if not pts:
        raise ValueError("no measurements to fit")
    w = [1.0 / (v * v) if v > 0 else 1.0 for _, v in pts]

    def linear_only() -> tuple[float, float]:
        den = sum(wk * s * s for wk, (s, _) in zip(w, pts))
        return max(0.0, sum(wk * s * v for wk, (s, v) in zip(w, pts)) / den), 0.0

    if len(pts) == 1:
        return linear_only()
    s11 = sum(wk * s ** 2 for wk, (s, _) in zip(w, pts))
    s12 = sum(wk * s ** 3 for wk, (s, _) in zip(w, pts))
    s22 = sum(wk * s ** 4 for wk, (s, _) in zip(w, pts))
    r1 = sum(wk * s * v for wk, (s, v) in zip(w, pts))
    r2 = sum(wk * s * s * v for wk, (s, v) in zip(w, pts))
    det = s11 * s22 - s12 * s12
    if det <= 0:
        return linear_only()
    a, b = (r1 * s22 - r2 * s12) / det, (s11 * r2 - s12 * r1) / det
    if b < 0:
        return linear_only()
    if a < 0:  # purely quadratic
        return 0.0, max(0.0, r2 / s22)
    return a, b


class _Scaler:
    """Evaluates fitted terms of the profile's fields at one (B, s)."""

    def __init__(self, profile: Profile, batch_size: int, seq_len: int):
        self.points = [profile, *profile.lengths]
        self.lengths = [p.seq_len for p in self.points]
        self.b0, self.b, self.s = profile.batch_size, batch_size, seq_len

    def __call__(self, get, integer: bool = False):
        values = [get(p) / self.b0 for p in self.points]
        if all(v == 0 for v in values):
            return 0 if integer else 0.0
        a, b = fit_length_terms(self.lengths, values)
        out = self.b * (a * self.s + b * self.s * self.s)
        return int(round(out)) if integer else out


def _recompute(f, profile: Profile, i: int) -> dict:
    """The optional recompute fields (checkpointed input bytes), scaled like the rest when every
    measured length has them."""
    points = [profile, *profile.lengths]
    out = {}
    if all(p.blocks[i].input_bytes is not None for p in points):
        out["input_bytes"] = f(lambda p: p.blocks[i].input_bytes, True)
    if all(p.blocks[i].input_kept_bytes is not None for p in points):
        out["input_kept_bytes"] = {bits: f(lambda p: p.blocks[i].input_kept_bytes[bits], True) for bits in PROFILE_BITS}
    return out


def profile_at(profile: Profile, batch_size: int, seq_len: int) -> Profile:
    """`profile` as measured at batch `batch_size` x `seq_len` (see the module docstring)."""
    if batch_size < 1 or seq_len < 1:
        raise FedquadError(f"batch size and sequence length must be positive, got {batch_size} and {seq_len}")
    if batch_size == profile.batch_size and seq_len == profile.seq_len:
        return profile
    f = _Scaler(profile, batch_size, seq_len)

    def block(i: int) -> BlockProfile:
        b = profile.blocks[i]
        return dataclasses.replace(
            b,
            saved_bytes=f(lambda p: p.blocks[i].saved_bytes, True),
            saved_bytes_lowest=f(lambda p: p.blocks[i].saved_bytes_lowest, True),
            kept_bytes={bits: f(lambda p: p.blocks[i].kept_bytes[bits], True) for bits in PROFILE_BITS},
            kept_bytes_lowest={bits: f(lambda p: p.blocks[i].kept_bytes_lowest[bits], True) for bits in PROFILE_BITS},
            forward_s=f(lambda p: p.blocks[i].forward_s), backward_s=f(lambda p: p.blocks[i].backward_s),
            quant_s={bits: f(lambda p: p.blocks[i].quant_s[bits]) for bits in PROFILE_BITS},
            **_recompute(f, profile, i))

    def depth0(p):
        return p.workspace_bytes if p.workspace_bytes_depth0 is None else p.workspace_bytes_depth0

    def quantized(p):
        return p.workspace_bytes if p.workspace_bytes_quantized is None else p.workspace_bytes_quantized

    def head_depth0(p):
        return p.head.saved_bytes if p.head.saved_bytes_depth0 is None else p.head.saved_bytes_depth0

    head = HeadProfile(saved_bytes=f(lambda p: p.head.saved_bytes, True), forward_s=f(lambda p: p.head.forward_s),
                       backward_s=f(lambda p: p.head.backward_s),
                       saved_bytes_depth0=None if profile.head.saved_bytes_depth0 is None else f(head_depth0, True))
    return dataclasses.replace(
        profile, batch_size=batch_size, seq_len=seq_len,
        workspace_bytes=f(lambda p: p.workspace_bytes, True),
        workspace_bytes_depth0=None if profile.workspace_bytes_depth0 is None else f(depth0, True),
        workspace_bytes_quantized=None if profile.workspace_bytes_quantized is None else f(quantized, True),
        embedding_forward_s=f(lambda p: p.embedding_forward_s), head=head,
        blocks=tuple(block(i) for i in range(profile.num_blocks)), lengths=(),
        source=f"{profile.source} at {batch_size}x{seq_len}")
