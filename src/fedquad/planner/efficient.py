"""Feasible and efficient plan sets (docs/design.md, "Planner").

Memory and step time of a plan do not depend on the device, only its budget does. So the
candidates are costed once per (profile, options) in a PlanMenu, and per depth reduced to a
Pareto frontier ordered by time: the efficient plan of a depth for a budget is the first frontier
entry that fits. Efficient sets then depend only on where the budget falls among the frontier's
memory thresholds, so devices share them (at most a few thousand distinct sets for 32 blocks,
however many devices), and a device costs one bisect plus a dict lookup.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from fedquad.costmodel.model import CostModel, cost_model
from fedquad.costmodel.profile import Profile
from fedquad.plan import ClientPlan
from fedquad.planner.config import PlannerConfig, Utility

_EPS = 1e-12  # float noise allowed when checking that time rises with depth


@dataclass(frozen=True)
class EfficientSet:
    """A device's efficient plans, and the steps the greedy walks through them.

    plans[d] is the efficient (least-time) plan of depth d; feasible depths form a prefix 0..max_depth.
    walk lists the depths the greedy visits, shallowest first. With prune_dominated (default) it
    keeps a depth only if its plan is worth more (utility.plan_value) than every shallower one:
    since time never falls with depth, a deeper plan worth no more is dominated - slower and no
    better, e.g. full depth that fits only with many int4 blocks versus one block less at int8.
    """

    plans: tuple[ClientPlan, ...] = field(metadata={"help": "efficient plan per feasible depth"})
    memory_bytes: tuple[float, ...] = field(metadata={"help": "predicted memory of each plan"})
    step_s: tuple[float, ...] = field(metadata={"help": "step time at speed 1.0"})
    upload_bytes: tuple[float, ...] = field(metadata={"help": "bytes uploaded after the round"})
    value: tuple[float, ...] = field(metadata={"help": "utility.plan_value of each plan"})
    walk: tuple[int, ...] = field(metadata={"help": "depths the greedy steps through, shallowest first"})
    walk_step_s: tuple[float, ...] = field(metadata={"help": "step_s along the walk"})
    walk_upload_bytes: tuple[float, ...] = field(metadata={"help": "upload_bytes along the walk"})
    walk_value: tuple[float, ...] = field(metadata={"help": "value along the walk"})
    walk_value_max: tuple[float, ...] = field(metadata={"help": "max value among walk steps 0..k (greedy's bound)"})
    monotone: bool = field(metadata={"help": "along the walk, value and time never fall as depth rises"})

    @property
    def max_depth(self) -> int:
        return len(self.plans) - 1


class PlanMenu:
    """Every candidate plan of one profile under one set of options, costed once."""

    def __init__(self, cm: CostModel, config: PlannerConfig, utility: Utility):
        self.cost_model = cm
        self.num_blocks = L = cm.num_blocks
        self.utility = utility
        self.prune_dominated = config.prune_dominated
        bits_options = config.bits if config.allow_quant else ()
        # recompute: r checkpointed blocks with full-precision inputs, and every (q, r) mix at each
        # bit width (overlapping blocks store a quantized input; ClientPlan); a profile without
        # recompute bytes offers none
        self.recompute = config.allow_recompute and cm.supports_recompute
        all_memory = []
        # per depth: frontier entries (memory, step, upload, plan), memory strictly falling, time rising
        self._frontiers: list[list[tuple]] = []
        self._neg_memory: list[list[float]] = []
        for d in range(L + 1):
            cands = [(*cm.costs(d, 0, 8, config.placement), 0, 0, 0)]
            for bits in bits_options:
                cands.extend((*cm.costs(d, q, bits, config.placement), q, -bits, 0) for q in range(1, d + 1))
            if self.recompute:  # q = 0 (full-precision inputs) comes with the first bit width only
                for i, bits in enumerate(bits_options or (None,)):
                    cands.extend((m, t, u, q, -bits if q else 0, r) for m, t, u, q, r
                                 in cm.recompute_grid(d, bits, config.placement) if q or i == 0)
            all_memory.extend(c[0] for c in cands)
            # least time first; ties: fewer quantized blocks, wider bits (less gradient error), fewer recomputed
            cands.sort(key=lambda c: (c[1], c[3], c[4], c[5]))
            frontier, lowest = [], float("inf")
            for memory, step, upload, q, neg_bits, r in cands:
                if memory < lowest:
                    lowest = memory
                    plan = ClientPlan(d, q, -neg_bits if q else 8, config.placement, r)
                    frontier.append((memory, step, upload, plan, utility.plan_value(plan, L)))
            self._frontiers.append(frontier)
            self._neg_memory.append([-f[0] for f in frontier])
        self._all_memory = sorted(all_memory)
        self._thresholds = sorted({f[0] for fr in self._frontiers for f in fr})
        self.smallest_bytes = self._all_memory[0]
        self._sets: dict[int, EfficientSet | None] = {}

    def feasible_count(self, budget_bytes: float) -> int:
        return bisect_right(self._all_memory, budget_bytes)

    def efficient_set(self, budget_bytes: float) -> EfficientSet | None:
        """The efficient set for a budget, or None when no plan fits."""
        key = bisect_right(self._thresholds, budget_bytes)
        if key in self._sets:
            return self._sets[key]
        es = self._build(self._thresholds[key - 1]) if key else None
        self._sets[key] = es
        return es

    def _build(self, budget: float) -> EfficientSet | None:
        chosen = []
        for d in range(self.num_blocks + 1):
            j = bisect_left(self._neg_memory[d], -budget)  # first frontier entry with memory <= budget
            if j == len(self._frontiers[d]):
                break  # the smallest plan of a depth grows with depth: no deeper depth fits either
            chosen.append(self._frontiers[d][j])
        if not chosen:
            return None
        memory, step, upload, plans, value = (tuple(x) for x in zip(*chosen))
        if self.prune_dominated:
            walk, best = [], float("-inf")
            for d, v in enumerate(value):
                if v > best:
                    walk.append(d)
                    best = v
        else:
            walk = list(range(len(plans)))
        value_max, best = [], float("-inf")
        for d in walk:
            best = max(best, value[d])
            value_max.append(best)
        monotone = all(value[a] <= value[b] and step[a] <= step[b] + _EPS and upload[a] <= upload[b]
                       for a, b in zip(walk, walk[1:]))
        return EfficientSet(plans, memory, step, upload, value, tuple(walk), tuple(step[d] for d in walk),
                            tuple(upload[d] for d in walk), tuple(value[d] for d in walk), tuple(value_max), monotone)


_MENUS: dict[tuple, PlanMenu] = {}


def plan_menu(profile: Profile, config: PlannerConfig) -> PlanMenu:
    """The menu for (profile, options), built once and reused across rounds."""
    utility = config.resolved_utility()
    try:
        hash(utility)
        utility_key = utility  # DepthUtility is a frozen dataclass: equal configs share one menu
    except TypeError:
        utility_key = ("id", id(utility))
    key = (id(profile), config.allow_quant, config.allow_recompute, config.bits, config.placement,
           config.prune_dominated, utility_key)
    menu = _MENUS.get(key)
    cm = cost_model(profile)
    if menu is None or menu.cost_model is not cm or menu.utility != utility:
        if len(_MENUS) > 128:  # a few configs x each distinct device length (Device.seq_len_tokens)
            _MENUS.clear()
        menu = _MENUS[key] = PlanMenu(cm, config, utility)
    return menu


def feasible_plans(profile: Profile, budget_bytes: float, config: PlannerConfig | None = None) -> list[ClientPlan]:
    """Every feasible plan, explicitly (for tests, debugging and display; the planner uses PlanMenu)."""
    config = config or PlannerConfig()
    cm = cost_model(profile)
    out = []
    for d in range(cm.num_blocks + 1):
        plans = [ClientPlan(d, 0, 8, config.placement)]
        if config.allow_quant:
            plans += [ClientPlan(d, q, b, config.placement) for b in config.bits for q in range(1, d + 1)]
        if config.allow_recompute and cm.supports_recompute:
            plans += [ClientPlan(d, 0, 8, config.placement, r) for r in range(1, d + 1)]
            plans += [ClientPlan(d, q, b, config.placement, r) for b in (config.bits if config.allow_quant else ())
                      for r in range(1, d + 1) for q in range(1, d + 1)]
        out.extend(p for p in plans if cm.memory_bytes(p) <= budget_bytes)
    return out
