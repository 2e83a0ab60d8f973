"""The FedQuad greedy (docs/design.md, "Planner") and plan_round, the planner's entry point.

Greedy: every device starts at the deepest step of its efficient set's walk (its deepest
efficient plan, minus depths the utility rates no better than a shallower, faster plan - see
EfficientSet); the current straggler (largest predicted round time) moves one step down; the
assignment with the best utility U = round_utility(sum_i w_i v(plan_i), max_i T_i) seen along the
way is kept; the walk stops when the straggler is at its lowest plan.

Speed: a heap finds the straggler, the weighted value is updated incrementally, and the walk
stops early once even an optimistic bound - every device keeps the best value still below it
while the round time drops to its floor max_i T_i(lowest plan) - cannot beat the best seen. The
bound only skips states that cannot win, so the answer is the plain greedy's. The best state is
rebuilt by replaying the recorded moves instead of copying the assignment at every improvement.

Guarantee against uniform assignments. A uniform assignment puts every device at the efficient
plan of depth d, or of its deepest feasible depth if that is shallower (devices that cannot take
part stay out). Let R_u be its round time. If along every walk time and value never fall as depth
rises, the greedy passes through the state where every device holds its deepest walk step with
time <= R_u. That step is worth at least the device's uniform plan (which is either on the walk
and no deeper, or dominated by a shallower walk step that is no slower and worth as much), and
the round time is <= R_u, so U_greedy >= U_uniform(d) for every d. With prune_dominated the
walks are monotone in value by construction, and time never falls with depth for any profile
with non-negative entries, so the plain greedy suffices. Should a walk still be non-monotone
(prune_dominated=False with a utility that penalizes a bit-width switch, float noise), the
planner also evaluates the uniform assignments and keeps the best (config.consider_uniform), so
the guarantee holds either way.
"""

from __future__ import annotations

import math
from heapq import heapify, heapreplace

from fedquad.costmodel.model import profile_for_length
from fedquad.costmodel.profile import Profile
from fedquad.errors import FedquadError
from fedquad.planner.config import PlannerConfig
from fedquad.planner.coverage import apply_coverage
from fedquad.planner.efficient import EfficientSet, plan_menu
from fedquad.planner.result import DeviceDecision, RoundPlan
from fedquad.planner.state import PlannerState

MiB = 2 ** 20


class Population:
    """The participating devices as parallel lists: T_j(depth) = A_j step + B_j upload + C_j."""

    def __init__(self):
        self.index: list[int] = []  # position in the caller's device list
        self.sets: list[EfficientSet] = []
        self.A: list[float] = []  # local_steps * time_ratio / speed
        self.B: list[float] = []  # time_ratio / up_Bps
        self.C: list[float] = []  # time_ratio * download_bytes / down_Bps
        self.W: list[float] = []  # data share

    def time(self, j: int, depth: int) -> float:
        es = self.sets[j]
        return self.A[j] * es.step_s[depth] + self.B[j] * es.upload_bytes[depth] + self.C[j]

    def evaluate(self, depths: list[int], combine) -> tuple[float, float, float]:
        """(utility, weighted value, round time) of an assignment of depths, computed from scratch."""
        value = math.fsum(self.W[j] * self.sets[j].value[d] for j, d in enumerate(depths))
        round_time = max(self.time(j, d) for j, d in enumerate(depths))
        return combine(value, round_time), value, round_time


def greedy(pop: Population, combine) -> tuple[list[int], int]:
    """(best assignment as depths, straggler moves made). Internally k_j is a position in walk_j."""
    sets, A, B, C, W = pop.sets, pop.A, pop.B, pop.C, pop.W
    top = [len(es.walk) - 1 for es in sets]
    k = list(top)
    heap = [(-(A[j] * es.walk_step_s[kj] + B[j] * es.walk_upload_bytes[kj] + C[j]), j)
            for j, (es, kj) in enumerate(zip(sets, k))]
    heapify(heap)
    value = math.fsum(W[j] * es.walk_value[kj] for j, (es, kj) in enumerate(zip(sets, k)))
    upper = math.fsum(W[j] * es.walk_value_max[kj] for j, (es, kj) in enumerate(zip(sets, k)))
    floor = max(A[j] * es.walk_step_s[0] + B[j] * es.walk_upload_bytes[0] + C[j] for j, es in enumerate(sets))
    best_u, best_step, moves = combine(value, -heap[0][0]), 0, []
    while True:
        j = heap[0][1]
        kj = k[j]
        if kj == 0 or combine(upper, floor) <= best_u:
            break
        es = sets[j]
        kj -= 1
        k[j] = kj
        value += W[j] * (es.walk_value[kj] - es.walk_value[kj + 1])
        upper += W[j] * (es.walk_value_max[kj] - es.walk_value_max[kj + 1])
        heapreplace(heap, (-(A[j] * es.walk_step_s[kj] + B[j] * es.walk_upload_bytes[kj] + C[j]), j))
        moves.append(j)
        u = combine(value, -heap[0][0])
        if u > best_u:  # strict: on ties the earlier, deeper assignment stays
            best_u, best_step = u, len(moves)
    k = top
    for j in moves[:best_step]:
        k[j] -= 1
    return [es.walk[kj] for es, kj in zip(sets, k)], len(moves)


def best_uniform(pop: Population, combine) -> tuple[float, int, list[int]] | None:
    """Best uniform assignment (utility, depth, depths), or None without participants."""
    if not pop.sets:
        return None
    best = None
    for d in range(max(es.max_depth for es in pop.sets) + 1):
        depths = [min(d, es.max_depth) for es in pop.sets]
        u = pop.evaluate(depths, combine)[0]
        if best is None or u > best[0]:
            best = (u, d, depths)
    return best


def _check(dev) -> None:
    for name in ("speed", "up_Bps", "down_Bps"):
        value = getattr(dev, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise FedquadError(f"device {dev.device_id}: {name} must be a positive number, got {value!r}")
    if dev.local_steps < 1 or dev.data_weight < 0 or dev.budget_bytes < 0:
        raise FedquadError(f"device {dev.device_id}: local_steps >= 1, data_weight >= 0 and budget >= 0 required")


def _quant_note(plan) -> str:
    note = f"; {plan.quant_layers} block(s) int{plan.bits} to fit" if plan.quant_layers else ""
    if plan.recompute_layers:  # overlapping blocks store a quantized input (ClientPlan)
        note += f"; {plan.recompute_layers} block(s) recomputed" + (" to fit" if not plan.quant_layers else "")
    return note


def plan_round(devices, profile: Profile, config: PlannerConfig | None = None,
               state: PlannerState | None = None) -> RoundPlan:
    """Plan one round: a DeviceDecision per device (input order), the round time and straggler."""
    config = config or PlannerConfig()
    menu = plan_menu(profile, config)
    # a device whose longest batch is shorter (or longer) than the profile's is planned at its own
    # length: one menu per distinct length, built once (profile_for_length caches the profile)
    menus = {None: menu}
    for dev in devices:
        length = getattr(dev, "seq_len_tokens", None)
        if length not in menus:
            menus[length] = plan_menu(profile_for_length(profile, length), config)
    combine = menu.utility.round_utility
    L = menu.num_blocks
    if state is not None and state.num_blocks != L:
        raise FedquadError(f"planner state is for {state.num_blocks} blocks, the profile has {L}")
    if len({d.device_id for d in devices}) != len(devices):
        raise FedquadError("device ids must be unique")
    total_w = math.fsum(d.data_weight for d in devices)
    pop, info = Population(), []
    for i, dev in enumerate(devices):
        _check(dev)
        tr, mr, free = state.corrections(dev.device_id) if state is not None else (1.0, 1.0, None)
        budget = dev.budget_bytes if free is None else min(dev.budget_bytes, free)
        dev_menu = menus[getattr(dev, "seq_len_tokens", None)]
        es = dev_menu.efficient_set(budget / mr)
        info.append((budget, tr, mr, dev_menu.feasible_count(budget / mr), es))
        if es is not None:
            pop.index.append(i)
            pop.sets.append(es)
            pop.A.append(dev.local_steps * tr / dev.speed)
            pop.B.append(tr / dev.up_Bps)
            pop.C.append(tr * dev_menu.cost_model.download_bytes / dev.down_Bps)
            pop.W.append(dev.data_weight / total_w if total_w > 0 else 1.0 / len(devices))

    method, moves, notes = "greedy", 0, {}
    k: list[int] = []  # chosen depth per participant
    if pop.sets:
        k, moves = greedy(pop, combine)
        if config.consider_uniform and not all(es.monotone for es in pop.sets):
            u_greedy = pop.evaluate(k, combine)[0]
            u, d, k_uniform = best_uniform(pop, combine)
            if u > u_greedy:
                method, k = f"uniform depth {d}", k_uniform
                notes = {j: f"uniform depth {d} assignment beat the greedy" for j in range(len(k))}
        if config.coverage_rounds is not None and state is not None:
            for j, text in apply_coverage(pop, k, state.rounds_without_trainer, config.coverage_rounds).items():
                notes[j] = text
                method = method + " + coverage" if "coverage" not in method else method
        utility, _, round_time = pop.evaluate(k, combine)
    else:
        utility, round_time = 0.0, 0.0

    decisions: list[DeviceDecision | None] = [None] * len(devices)
    straggler, straggler_time = None, -1.0
    for j, depth in enumerate(k):
        i = pop.index[j]
        dev, es = devices[i], pop.sets[j]
        budget, tr, mr, count, _ = info[i]
        plan, t = es.plans[depth], pop.time(j, depth)
        start = es.walk[-1]
        if t > straggler_time:
            straggler, straggler_time = dev.device_id, t
        if j in notes:
            reason = notes[j]
        elif depth == start == es.max_depth:
            reason = ("full depth" if depth == L else "deepest that fits") + _quant_note(plan)
        elif depth == start:
            reason = (f"deepest worth it: deeper fits only as {es.plans[es.max_depth].describe()}, which is "
                      f"slower and rated no higher" + _quant_note(plan))
        else:
            reason = (f"straggler: lowered {es.walk.index(start) - es.walk.index(depth)} step(s) from d={start} "
                      f"({pop.time(j, start):.3g} s -> {t:.3g} s)" + _quant_note(plan))
        decisions[i] = DeviceDecision(dev.device_id, dev.device_class, budget, plan, es.memory_bytes[depth] * mr, t,
                                      reason, count, es.max_depth, tr, mr)
    for i, dev in enumerate(devices):
        if decisions[i] is None:
            budget, tr, mr, count, _ = info[i]
            need = menus[getattr(dev, "seq_len_tokens", None)].smallest_bytes * mr
            reason = (f"cannot take part: smallest plan (head only) needs {need / MiB:.1f} MiB > budget "
                      f"{budget / MiB:.1f} MiB (short by {(need - budget) / MiB:.1f} MiB)")
            decisions[i] = DeviceDecision(dev.device_id, dev.device_class, budget, None, None, None, reason,
                                          count, None, tr, mr)
    return RoundPlan(tuple(decisions), round_time, straggler, utility, L, method, moves)
