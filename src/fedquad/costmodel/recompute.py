"""Recompute (activation checkpointing) terms of the cost model, as a mixin of `CostModel`.

A recomputed block keeps only its input (quantized when the block is also quantized) and runs its
forward again in backward: one more forward of time, and while it runs its backward its rebuilt
activations are live on top of what the blocks below still hold. Backward runs top-down and frees
each block's stored bytes as it goes, so a plan's activation peak is the larger of what is stored
and the worst (stored up to a recomputed block + its rebuilt activations); range maxima built once
per profile keep that O(1) per plan. Pure Python: no torch.
"""

from __future__ import annotations

import math
from itertools import accumulate

from fedquad.costmodel.profile import PROFILE_BITS
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan


def prefix_sums(values) -> list:
    return [0, *accumulate(values)]


_prefix = prefix_sums


def _range_max(prefix: list, blocks) -> list[list]:
    """[a][b - a - 1] = max over a <= l < b of prefix[l + 1] + blocks[l].saved_bytes (O(L^2), once)."""
    out = []
    for a in range(len(blocks)):
        row, best = [], -math.inf
        for i in range(a, len(blocks)):
            best = max(best, prefix[i + 1] + blocks[i].saved_bytes)
            row.append(best)
        out.append(row)
    return out


class RecomputeCosts:
    """The recompute half of `CostModel` (it sets `profile`, `num_blocks`, `supports_recompute`
    and the prefix sums these methods read, then calls `_init_recompute`)."""

    def _init_recompute(self, blocks) -> None:
        """Prefix sums of the recompute terms, and the range maxima of saved_l (O(L^2), once)."""
        self._input = _prefix(b.input_bytes for b in blocks)
        self._input_kept = {bits: _prefix(b.input_kept_bytes[bits] for b in blocks) for bits in PROFILE_BITS}
        self._forward = _prefix(b.forward_s for b in blocks)
        self._quant_input = {bits: _prefix(b.quant_s[bits] * b.input_bytes / b.saved_bytes if b.saved_bytes else 0.0
                                           for b in blocks) for bits in PROFILE_BITS}
        self._saved_lowest = [b.saved_bytes_lowest for b in blocks]
        # range maxima, [a][b - a - 1] = max over a <= l < b of (prefix[l + 1] + saved_l): the live
        # bytes when recomputed block l runs its backward, up to a constant per plan
        self._peak_in = _range_max(self._input, blocks)
        self._peak_kept = {bits: _range_max(self._input_kept[bits], blocks) for bits in PROFILE_BITS}


    # -- recompute ------------------------------------------------------------------------------
    def _require_recompute(self) -> None:
        if not self.supports_recompute:
            raise FedquadError(f"profile {self.profile.source} has no recompute bytes (blocks[].input_bytes): "
                               "re-run `fedquad profile` to price plans with recompute_layers")

    def _segments(self, depth: int, q: int, r: int, placement: str):
        """Block ranges (a, b) of a plan: recomputed with a quantized input, recomputed only,
        quantized only, plain; and which of the four holds the lowest trainable block (0..3)."""
        L = self.num_blocks
        lo = L - depth
        m, x = min(q, r), max(q, r)
        if placement == "bottom":
            both, rest = (lo, lo + m), (lo + x, L)
            ronly = (lo + q, lo + r) if r > q else (0, 0)
            qonly = (lo + r, lo + q) if q > r else (0, 0)
            where = 0 if m else (1 if r else (2 if q else 3))
        else:
            both, rest = (L - m, L), (lo, L - x)
            ronly = (L - r, L - q) if r > q else (0, 0)
            qonly = (L - q, L - r) if q > r else (0, 0)
            where = 0 if m == depth else (1 if r == depth else (2 if q == depth else 3))
        return both, ronly, qonly, rest, where

    def _recompute_costs(self, depth: int, q: int, bits: int, placement: str, r: int):
        self._require_recompute()
        L = self.num_blocks
        lo = L - depth
        both, ronly, qonly, rest, where = self._segments(depth, q, r, placement)
        adapter = self._adapter_total - self._adapter[lo]
        forward = self._forward
        ra, rb = (lo, lo + r) if placement == "bottom" else (L - r, L)
        step = (self._base_step_s + self._backward[L] - self._backward[lo] + forward[rb] - forward[ra]
                + self._quant[bits][qonly[1]] - self._quant[bits][qonly[0]]
                + self._quant_input[bits][both[1]] - self._quant_input[bits][both[0]])
        act = self._recompute_activation(depth, q, bits, r, both, ronly, qonly, rest, where)
        memory = self._fixed_bytes + self._opt * adapter + self._activation_peak(depth, q, bits, placement, r, act)
        return memory, step, self.profile.head_adapter_bytes + adapter

    def _recompute_activation(self, depth, q, bits, r, both, ronly, qonly, rest, where) -> int:
        saved, kept = self._saved, self._kept[bits]
        act = (self._head_saved + saved[rest[1]] - saved[rest[0]] + kept[qonly[1]] - kept[qonly[0]]
               + self._input[ronly[1]] - self._input[ronly[0]]
               + self._input_kept[bits][both[1]] - self._input_kept[bits][both[0]])
        lo = self.num_blocks - depth
        if where == 3:
            act += self._low_raw[lo]
        elif where == 2:
            act += self._low_kept[bits][lo]
        return act

    def _activation_peak(self, depth: int, q: int, bits: int, placement: str, r: int, act: int) -> int:
        """P(plan) of the module docstring, in O(1): `act` is A(plan)."""
        L = self.num_blocks
        lo = L - depth
        m = min(q, r)
        IN, IK = self._input, self._input_kept[bits]
        g_in, g_kept = self._peak_in, self._peak_kept[bits]
        if placement == "bottom":  # blocks lo..lo+m-1 store a quantized input, lo+m..lo+r-1 a raw one
            below = 0
            first_in, first_kept = lo + m, lo
        else:  # lo..L-r-1 as usual, then L-r..L-m-1 raw inputs, L-m..L-1 quantized ones
            stored_r = IN[L - m] - IN[L - r] + IK[L] - IK[L - m]
            below = act - self._head_saved - stored_r
            first_in, first_kept = L - r, L - m
        # block lo (when recomputed) rebuilds saved_lowest: taken apart, the ranges start above it
        peak = -1
        if r and (placement == "bottom" or r == depth):
            own = (IK[lo + 1] - IK[lo]) if (first_kept == lo and m) else (IN[lo + 1] - IN[lo])
            peak = below + own + self._saved_lowest[lo]
        a_in, b_in = max(first_in, lo + 1), (lo + r if placement == "bottom" else L - m)
        if b_in > a_in:  # raw inputs, above the quantized ones (bottom) or below them (top)
            base = IK[lo + m] - IK[lo] if placement == "bottom" else 0
            peak = max(peak, below + base - IN[first_in] + g_in[a_in][b_in - a_in - 1])
        a_k, b_k = max(first_kept, lo + 1), (lo + m if placement == "bottom" else L)
        if b_k > a_k:
            base = 0 if placement == "bottom" else IN[L - m] - IN[L - r]
            peak = max(peak, below + base - IK[first_kept] + g_kept[a_k][b_k - a_k - 1])
        return max(act, self._head_saved + peak)

    def activation_peak_bytes(self, plan: ClientPlan) -> int:
        """P(plan): saved activations at their peak in the step (A(plan) without recompute); the
        activations' part of memory_bytes."""
        self._check(plan)
        act = self.saved_bytes(plan)
        if not plan.recompute_layers:
            return act
        return self._activation_peak(plan.depth, plan.quant_layers, plan.bits, plan.placement, plan.recompute_layers,
                                     act)

    def recompute_grid(self, depth: int, bits: int | None, placement: str = "bottom") -> list[tuple]:
        """Every recompute plan of one depth, costed: [(memory_bytes, step_s, upload_bytes, q, r)] for
        r in 1..depth and q in 0..depth (q = 0 only when `bits` is None), each equal to
        costs(depth, q, bits, placement, r). The planner's menu needs ~2 depth^2 of them per depth;
        this loop does the arithmetic of costs() inline (tests compare the two)."""
        self._require_recompute()
        if depth == 0:
            return []
        L = self.num_blocks
        lo = L - depth
        saved, backward, forward, inp = self._saved, self._backward, self._forward, self._input
        b = 8 if bits is None else bits
        kept, quant, ikept, qin = self._kept[b], self._quant[b], self._input_kept[b], self._quant_input[b]
        low_raw, low_kept = self._low_raw[lo], self._low_kept[b][lo]
        adapter = self._adapter_total - self._adapter[lo]
        upload = self.profile.head_adapter_bytes + adapter
        fixed = self._fixed_bytes + self._opt * adapter  # the same float operations, in order, as costs()
        head = self._head_saved
        base = self._base_step_s + backward[L] - backward[lo]
        bottom = placement == "bottom"
        out = []
        peak_of = self._activation_peak
        qs = range(0, depth + 1) if bits is not None else (0,)
        if bottom:  # P(plan) inline: integers, so any order of the sums gives _activation_peak's value
            g_in, g_kept, low = self._peak_in, self._peak_kept[b], self._saved_lowest[lo]
            own_raw, own_kept = inp[lo + 1] - inp[lo] + low, ikept[lo + 1] - ikept[lo] + low
            kept_peaks = [own_kept] * (depth + 1)  # m quantized inputs at the bottom -> their peak
            for m in range(2, depth + 1):
                kept_peaks[m] = max(own_kept, g_kept[lo + 1][m - 2] - ikept[lo])
        for r in range(1, depth + 1):
            ra, rb = (lo, lo + r) if bottom else (L - r, L)
            step_r = base + forward[rb] - forward[ra]
            for q in qs:
                m, x = (q, r) if q <= r else (r, q)
                if bottom:  # the lowest trainable block is always recomputed here: no correction
                    act = head + saved[L] - saved[lo + x] + ikept[lo + m] - ikept[lo]
                    if r >= q:  # q == r included: no quantized-only blocks (costs() adds none)
                        act += inp[lo + r] - inp[lo + q]
                        step = step_r + qin[lo + m] - qin[lo]
                    else:
                        act += kept[lo + q] - kept[lo + r]
                        step = step_r + quant[lo + q] - quant[lo + r] + qin[lo + m] - qin[lo]
                    peak = kept_peaks[m] if m else own_raw
                    a_in = lo + m if m else lo + 1
                    if lo + r > a_in:  # the raw inputs above the quantized ones
                        peak = max(peak, ikept[lo + m] - ikept[lo] - inp[lo + m] + g_in[a_in][lo + r - a_in - 1])
                    out.append((fixed + max(act, head + peak), step, upload, q, r))
                    continue
                else:
                    act = head + saved[L - x] - saved[lo] + ikept[L] - ikept[L - m]
                    if r >= q:  # q == r included: no quantized-only blocks (costs() adds none)
                        act += inp[L - q] - inp[L - r]
                        step = step_r + qin[L] - qin[L - m]
                        if r < depth:
                            act += low_raw
                    else:
                        act += kept[L - r] - kept[L - q]
                        step = step_r + quant[L - r] - quant[L - q] + qin[L] - qin[L - m]
                        if q == depth and r < depth:
                            act += low_kept
                        elif q < depth:
                            act += low_raw
                out.append((fixed + peak_of(depth, q, b, placement, r, act), step, upload, q, r))
        return out

    def recompute_peak_bytes(self, plan: ClientPlan) -> int:
        """The transient of the largest recomputed block's backward (0 without recompute): what
        `fedquad memory` reports as recompute_peak_bytes, and part of memory_bytes."""
        self._check(plan)
        if not plan.recompute_layers:
            return 0
        self._require_recompute()
        lo = self.num_blocks - plan.depth
        return max(self._saved_lowest[i] if i == lo else self.profile.blocks[i].saved_bytes
                   for i in plan.recomputed_blocks(self.num_blocks))
