"""The one rule for "nobody can take part": `plan` and `simulate`/`compare` refuse through here.

A device takes part only if the smallest plan (head only) fits its budget; that floor is the same
for every strategy (none trains less than the head), so when the planner finds no participant,
no strategy could train anyone, and running rounds with 0 participants would be a silent no-op.
Pure Python: no torch.
"""

from __future__ import annotations

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
