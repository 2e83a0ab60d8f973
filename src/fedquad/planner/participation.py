"""Who takes part. The one rule for "nobody can take part" (`plan` and `simulate`/`compare` refuse
through here), and the sit-out option: a device skips a round it would slow more than it adds.

A device takes part only if the smallest plan (head only) fits its budget; that floor is the same
for every strategy (none trains less than the head), so when the planner finds no participant,
no strategy could train anyone, and running rounds with 0 participants would be a silent no-op.
Pure Python: no torch.
"""

from __future__ import annotations

import dataclasses

from fedquad.errors import FedquadError
from fedquad.planner.config import PlannerConfig
from fedquad.planner.greedy import plan_round
from fedquad.planner.result import RoundPlan


def require_participants(devices, profile, scenario_name: str, when: str,
                         config: PlannerConfig | None = None) -> RoundPlan:
    """`plan_round(devices, ...)`, or a one-line error naming the best-placed device and why it
    cannot take part (`when` says which device states were planned, e.g. "in round 3")."""
    result = plan_round(devices, profile, config)
    if not result.participants:
        best = max(result.decisions, key=lambda d: d.budget_bytes)
        raise FedquadError(f"no device of scenario {scenario_name} can take part {when}; the one with the largest "
                           f"budget, {best.device_id}: {best.reason}")
    return result


def plan_with_sit_out(devices, profile, config: PlannerConfig, state=None) -> RoundPlan:
    """`plan_round`, then let stragglers sit out while that raises the round's utility.

    U = round_utility(sum_i w_i v_i, R) with w_i each device's share of the sampled devices' data:
    dropping the straggler loses w_j v_j of value and shortens R to the next device's time. The
    slowest devices are dropped one by one (the best prefix of that walk is kept, as the greedy
    keeps its best state), the others are re-planned without them (they may go deeper now that
    the round is shorter), and the result is kept only if its utility, with the same weights,
    beats the plan with everyone. A device that was sampled and did not train in
    `config.sit_out_floor_rounds` rounds in a row (PlannerState.untrained_streak) is never dropped,
    so no device's data starves; nor is the last participant, nor more than
    `config.sit_out_max_fraction` of the participants. O(n log n) plus one re-plan."""
    base = plan_round(devices, profile, config, state)
    if not config.sit_out or len(base.participants) < 2:
        return base
    utility = config.resolved_utility()
    combine, L = utility.round_utility, base.num_blocks
    total_w = sum(d.data_weight for d in devices)
    weight = {d.device_id: (d.data_weight / total_w if total_w > 0 else 1.0 / len(devices)) for d in devices}
    streak = state.untrained_streak if state is not None else {}

    def value_of(plan_result: RoundPlan) -> float:
        return combine(sum(weight[d.device_id] * utility.plan_value(d.plan, L) for d in plan_result.participants),
                       plan_result.round_time_s)

    by_time = sorted(base.participants, key=lambda d: (-d.predicted_time_s, d.device_id))
    most = min(len(by_time) - 1, int(config.sit_out_max_fraction * len(by_time)))
    worth = {d.device_id: weight[d.device_id] * utility.plan_value(d.plan, L) for d in by_time[:most]}
    value = sum(worth.values()) + sum(weight[d.device_id] * utility.plan_value(d.plan, L) for d in by_time[most:])
    best_u, best_n = combine(value, by_time[0].predicted_time_s), 0
    for n, d in enumerate(by_time[:most], 1):
        if streak.get(d.device_id, 0) >= config.sit_out_floor_rounds:
            break  # the straggler must train: dropping anyone faster does not shorten the round
        value -= worth[d.device_id]
        u = combine(value, by_time[n].predicted_time_s)
        if u > best_u:
            best_u, best_n = u, n
    if best_n == 0:
        return base
    dropped = {d.device_id: d for d in by_time[:best_n]}
    kept = [dev for dev in devices if dev.device_id not in dropped]
    replanned = plan_round(kept, profile, config, state)
    if value_of(replanned) <= value_of(base):
        return base
    faster_s = base.round_time_s - replanned.round_time_s
    new = {d.device_id: d for d in replanned.decisions}
    decisions = tuple(new[dev.device_id] if dev.device_id in new else dataclasses.replace(
        dropped[dev.device_id], plan=None, predicted_bytes=None, predicted_time_s=None,
        reason=(f"sits out: the round is {faster_s:.3g} s shorter without the {len(dropped)} slowest, worth more than "
                f"their data ({100 * sum(weight[i] for i in dropped):.0f}% of the round's)"))
        for dev in devices)
    return dataclasses.replace(replanned, decisions=decisions, method=replanned.method + " + sit-out",
                               utility=value_of(replanned))
