"""Cost model (docs/design.md, "Cost model"): memory, step time and round time of a ClientPlan.

    M(plan)    = frozen + adapter + opt * (head_adapter + sum_trainable adapter_l) + workspace + A(plan)
                 (workspace_depth0 in place of workspace at depth 0, workspace_quantized with
                 quantized blocks)
    A(plan)    = head.saved (head.saved_bytes_depth0 at depth 0)
                 + sum_trainable (kept_l[bits] if l quantized else saved_l)
                 with the lowest trainable block's saved_lowest / kept_lowest[bits] in place of its
                 saved / kept (its input needs no gradient, so it may save less)
    step(plan) = (embedding_fwd + sum_all fwd_l + head fwd + head bwd + sum_trainable bwd_l
                  + sum_quantized quant_l[bits]) / speed
    round(plan) = local_steps * step + adapter / down_Bps + (head_adapter + sum_trainable adapter_l) / up_Bps

Recompute (ClientPlan.recompute_layers; needs a profile with input_bytes, Profile.supports_recompute):
a recomputed block stores only its checkpoint input, input_l (input_kept_l[bits] when it is also
quantized), in place of saved_l / kept_l; the lowest-block correction does not apply to it. In
backward it rebuilds its activations, saved_l (saved_lowest for the lowest trainable block), a
transient that lives while that block's backward runs; backward goes from the top block down and
frees each block's stored bytes once it has run, so then only head.saved + the stored bytes of
blocks lo..l are live. M(plan) therefore uses the activations' peak over the step,
    P(plan) = max(A(plan), head.saved + max over recomputed l of (stored(lo..l) + saved_l)),
in place of A(plan) (P = A without recompute). step(plan) adds one extra forward per recomputed
block, sum_R fwd_l, plus quant_l[bits] * input_l / saved_l for each recomputed block whose input
is quantized (only its input is quantized), instead of quant_l[bits].

A(plan) is what `fedquad memory` measures as kept bytes plus outside bytes, exactly. M(plan) is the
whole step's peak: M - frozen - adapter is `step_peak_bytes`, what `fedquad memory` and `fedquad
profile` measure as the step's peak above the resident model (diagnostics/step_peak.py); the
workspace is that measured peak minus the rest (logits and their fp32 copies and gradients,
no_grad attention scores, backward workspace). All of it is at the profile's batch shape;
`cost_model_at(profile, B, s)` is the model at another shape (costmodel/shape.py).
Trainable and quantized blocks are contiguous ranges (ClientPlan), so every sum is a difference
of prefix sums: O(1) per plan, which matters because the planner evaluates thousands of plans.
Pure Python: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedquad.costmodel.profile import PROFILE_BITS, Profile
from fedquad.costmodel.recompute import RecomputeCosts, prefix_sums as _prefix
from fedquad.costmodel.shape import profile_at
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan


@dataclass(frozen=True)
class RoundTimeBreakdown:
    compute_s: float = field(metadata={"help": "local_steps x step time at the device's speed"})
    download_s: float = field(metadata={"help": "time to download the global adapter"})
    upload_s: float = field(metadata={"help": "time to upload the trained tensors"})

    @property
    def total_s(self) -> float:
        return self.compute_s + self.download_s + self.upload_s

    def to_dict(self) -> dict:
        return {"compute_s": self.compute_s, "download_s": self.download_s, "upload_s": self.upload_s,
                "total_s": self.total_s}


class CostModel(RecomputeCosts):
    """Prefix-summed view of one Profile. Build once (cost_model(profile) caches it), query often."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.base_profile = profile  # the profile this was derived from (cost_model_at), for the cache
        self.num_blocks = profile.num_blocks
        blocks = profile.blocks
        self._saved = _prefix(b.saved_bytes for b in blocks)
        self._kept = {bits: _prefix(b.kept_bytes[bits] for b in blocks) for bits in PROFILE_BITS}
        # lowest trainable block: what it saves minus what the prefix sums charge for it
        self._low_raw = [b.saved_bytes_lowest - b.saved_bytes for b in blocks]
        self._low_kept = {bits: [b.kept_bytes_lowest[bits] - b.kept_bytes[bits] for b in blocks]
                          for bits in PROFILE_BITS}
        self._adapter = _prefix(b.adapter_bytes for b in blocks)
        self._backward = _prefix(b.backward_s for b in blocks)
        self._quant = {bits: _prefix(b.quant_s[bits] for b in blocks) for bits in PROFILE_BITS}
        self._opt = profile.optimizer_bytes_per_trainable_byte
        # What every plan pays: weights, the whole adapter (all global adapters run in forward),
        # the head's optimizer state and the workspace; all blocks' forward and the head's step.
        self.resident_bytes = profile.frozen_weight_bytes + profile.adapter_bytes
        self._fixed_bytes = self.resident_bytes + self._opt * profile.head_adapter_bytes + profile.workspace_bytes
        # depth 0 has its own measured transient (a causal LM computes no logits gradient there)
        self._depth0_extra = (0 if profile.workspace_bytes_depth0 is None
                              else profile.workspace_bytes_depth0 - profile.workspace_bytes)
        # quantized blocks: backward holds a dequantized copy of a block's activations while it runs
        self._quant_extra = (0 if profile.workspace_bytes_quantized is None
                             else profile.workspace_bytes_quantized - profile.workspace_bytes)
        self._adapter_total = self._adapter[-1]
        self._head_saved = profile.head.saved_bytes
        self._head_saved0 = (profile.head.saved_bytes if profile.head.saved_bytes_depth0 is None
                             else profile.head.saved_bytes_depth0)
        self._base_step_s = (profile.embedding_forward_s + sum(b.forward_s for b in blocks)
                             + profile.head.forward_s + profile.head.backward_s)
        self.download_bytes = profile.adapter_bytes
        self.supports_recompute = profile.supports_recompute
        if self.supports_recompute:
            self._init_recompute(blocks)

    def _quant_range(self, depth: int, quant_layers: int, placement: str) -> tuple[int, int]:
        L = self.num_blocks
        if placement == "bottom":
            return L - depth, L - depth + quant_layers
        return L - quant_layers, L

    def costs(self, depth: int, quant_layers: int = 0, bits: int = 8, placement: str = "bottom",
              recompute_layers: int = 0):
        """(memory_bytes, unscaled step_time_s, upload_bytes) without building a ClientPlan.

        The caller guarantees 0 <= quant_layers, recompute_layers <= depth <= L (the planner's inner loop)."""
        if recompute_layers:
            return self._recompute_costs(depth, quant_layers, bits, placement, recompute_layers)
        L = self.num_blocks
        lo = L - depth
        adapter = self._adapter_total - self._adapter[lo]
        step = self._base_step_s + self._backward[L] - self._backward[lo]
        if quant_layers:
            qa, qb = self._quant_range(depth, quant_layers, placement)
            q = self._quant[bits]
            step += q[qb] - q[qa]
        memory = self._fixed_bytes + self._opt * adapter + self.activation_bytes(depth, quant_layers, bits, placement)
        if depth == 0:
            memory += self._depth0_extra
        elif quant_layers:
            memory += self._quant_extra
        return memory, step, self.profile.head_adapter_bytes + adapter

    def activation_bytes(self, depth: int, quant_layers: int = 0, bits: int = 8, placement: str = "bottom") -> int:
        """A(plan): saved-activation bytes kept for backward, blocks and outside them; what
        `fedquad memory` reports as kept_bytes + outside_bytes. Same contract as costs()."""
        if depth == 0:
            return self._head_saved0
        L = self.num_blocks
        lo = L - depth
        saved = self._saved
        act = saved[L] - saved[lo] + self._head_saved
        lowest_quantized = False
        if quant_layers:
            qa, qb = self._quant_range(depth, quant_layers, placement)
            kept = self._kept[bits]
            act += kept[qb] - kept[qa] - (saved[qb] - saved[qa])
            lowest_quantized = qa == lo
        return act + (self._low_kept[bits][lo] if lowest_quantized else self._low_raw[lo])

    def _check(self, plan: ClientPlan) -> ClientPlan:
        if plan.depth > self.num_blocks:
            raise FedquadError(f"plan {plan.describe()} is deeper than the profiled model "
                               f"({self.profile.model}, {self.num_blocks} blocks)")
        return plan

    def memory_bytes(self, plan: ClientPlan) -> float:
        self._check(plan)
        return self.costs(plan.depth, plan.quant_layers, plan.bits, plan.placement, plan.recompute_layers)[0]

    def step_peak_bytes(self, plan: ClientPlan) -> float:
        """The step's predicted peak above the resident model (frozen weights + adapter): gradients
        and optimizer state, saved activations and transients; what `fedquad memory` measures
        as `measured_step_peak_bytes`."""
        return self.memory_bytes(plan) - self.resident_bytes

    def saved_bytes(self, plan: ClientPlan) -> int:
        """Saved-activation bytes of the plan (blocks + outside), comparable with `fedquad memory`."""
        self._check(plan)
        if plan.recompute_layers:
            self._require_recompute()
            segments = self._segments(plan.depth, plan.quant_layers, plan.recompute_layers, plan.placement)
            return self._recompute_activation(plan.depth, plan.quant_layers, plan.bits, plan.recompute_layers,
                                              *segments)
        return self.activation_bytes(plan.depth, plan.quant_layers, plan.bits, plan.placement)

    def step_time_s(self, plan: ClientPlan, speed: float = 1.0) -> float:
        self._check(plan)
        return self.costs(plan.depth, plan.quant_layers, plan.bits, plan.placement, plan.recompute_layers)[1] / speed

    def upload_bytes(self, plan: ClientPlan) -> int:
        self._check(plan)
        return self.costs(plan.depth, plan.quant_layers, plan.bits, plan.placement, plan.recompute_layers)[2]

    def round_time(self, plan: ClientPlan, speed: float, up_Bps: float, down_Bps: float,
                   local_steps: int) -> RoundTimeBreakdown:
        self._check(plan)
        if speed <= 0 or up_Bps <= 0 or down_Bps <= 0:
            raise FedquadError(f"speed and bandwidths must be positive (speed={speed}, up={up_Bps}, down={down_Bps})")
        _, step, upload = self.costs(plan.depth, plan.quant_layers, plan.bits, plan.placement, plan.recompute_layers)
        return RoundTimeBreakdown(compute_s=local_steps * step / speed, download_s=self.download_bytes / down_Bps,
                                  upload_s=upload / up_Bps)

    def deepest_fitting(self, budget_bytes: float, bits: int | None = None) -> tuple[int, int] | None:
        """(depth, quant_layers) of the deepest plan whose memory fits `budget_bytes`, with the
        fewest quantized (bottom) blocks at that depth; `bits=None` allows no quantization. None
        when not even depth 0 fits. Memory need not grow with depth (a profile is hand-editable),
        so every depth is tried, deepest first."""
        for depth in range(self.num_blocks, -1, -1):
            if bits is None:
                if self.costs(depth, 0)[0] <= budget_bytes:
                    return depth, 0
            elif self.costs(depth, depth, bits)[0] <= budget_bytes:
                return depth, next(q for q in range(depth + 1) if self.costs(depth, q, bits)[0] <= budget_bytes)
        return None

    def full_footprint_bytes(self) -> float:
        """Memory of full-depth, unquantized training: the yardstick for `fraction` budgets."""
        return self.costs(self.num_blocks, 0)[0]

    def head_only_bytes(self) -> float:
        """Memory of depth 0 (head only): the smallest plan there is."""
        return self.costs(0, 0)[0]


_CACHE: dict[int, CostModel] = {}


def cost_model(profile: Profile) -> CostModel:
    """The CostModel of `profile`, built once. Keyed on identity: a Profile holds dicts, so it
    cannot be hashed, and profiles are few and long-lived."""
    cm = _CACHE.get(id(profile))
    if cm is None or cm.profile is not profile:
        if len(_CACHE) > 32:  # keeps dropped profiles from accumulating forever
            _CACHE.clear()
        cm = _CACHE[id(profile)] = CostModel(profile)
    return cm


_SHAPE_CACHE: dict[tuple[int, int, int], CostModel] = {}


def cost_model_at(profile: Profile, batch_size: int, seq_len: int) -> CostModel:
    """The CostModel of `profile` at batch `batch_size` x `seq_len` (costmodel/shape.py), built
    once per shape: the planner asks for each device's shape once, then queries plans in O(1)."""
    if batch_size == profile.batch_size and seq_len == profile.seq_len:
        return cost_model(profile)
    key = (id(profile), int(batch_size), int(seq_len))
    cm = _SHAPE_CACHE.get(key)
    if cm is None or cm.base_profile is not profile:
        if len(_SHAPE_CACHE) > 256:
            _SHAPE_CACHE.clear()
        cm = _SHAPE_CACHE[key] = CostModel(profile_at(profile, batch_size, seq_len))
        cm.base_profile = profile
    return cm


def profile_for_length(profile: Profile, seq_len: int | None) -> Profile:
    """`profile` at its own batch size and `seq_len` padded tokens (None: as profiled): what a
    device whose longest batch has `seq_len` tokens is planned and charged with. Built once per
    length (cost_model_at's cache), so the planner's menus, keyed by the profile, are too."""
    if seq_len is None or int(seq_len) == profile.seq_len:
        return profile
    return cost_model_at(profile, profile.batch_size, int(seq_len)).profile


def predict_step_peak_bytes(profile: Profile, plan: ClientPlan, batch_size: int, seq_len: int) -> int:
    """The whole memory one training step of `plan` needs on a batch of `batch_size` x `seq_len`
    (padded length): resident weights and adapter, gradients and AdamW state, saved activations,
    transients. Compare it with the memory the device has for the plan; the client calls it
    before each step to decide whether to split the batch."""
    return int(math.ceil(cost_model_at(profile, batch_size, seq_len).memory_bytes(plan)))


def memory_bytes(profile: Profile, plan: ClientPlan) -> float:
    return cost_model(profile).memory_bytes(plan)


def saved_bytes(profile: Profile, plan: ClientPlan) -> int:
    return cost_model(profile).saved_bytes(plan)


def step_time_s(profile: Profile, plan: ClientPlan, speed: float = 1.0) -> float:
    return cost_model(profile).step_time_s(plan, speed)


def round_time_breakdown(profile: Profile, plan: ClientPlan, speed: float, up_Bps: float, down_Bps: float,
                         local_steps: int) -> RoundTimeBreakdown:
    return cost_model(profile).round_time(plan, speed, up_Bps, down_Bps, local_steps)


def round_time_s(profile: Profile, plan: ClientPlan, speed: float, up_Bps: float, down_Bps: float,
                 local_steps: int) -> float:
    return round_time_breakdown(profile, plan, speed, up_Bps, down_Bps, local_steps).total_s
