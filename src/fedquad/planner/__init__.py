"""FedQuad planner (docs/design.md, "Planner"): per device per round, a (depth, quant_layers, bits) plan.

1. feasible set under the device's memory budget (empty: the device cannot take part, and the
   decision says by how much it is short); 2. efficient set, one least-time plan per depth
   (fedquad.planner.efficient); 3. greedy straggler lowering that keeps the best utility
   (fedquad.planner.greedy); 4. optional coverage of starving blocks (fedquad.planner.coverage);
5. per-device EMA corrections from measurements (fedquad.planner.state).

Pure Python over plain data and deterministic: no torch, no randomness.
"""

from fedquad.planner.config import DepthUtility, PlannerConfig, Utility
from fedquad.planner.efficient import EfficientSet, PlanMenu, feasible_plans, plan_menu
from fedquad.planner.greedy import plan_round
from fedquad.planner.result import DeviceDecision, RoundPlan
from fedquad.planner.state import DeviceStats, PlannerState

__all__ = ["DepthUtility", "DeviceDecision", "DeviceStats", "EfficientSet", "PlanMenu", "PlannerConfig",
           "PlannerState", "RoundPlan", "Utility", "feasible_plans", "plan_menu", "plan_round"]
