"""`fedquad-no-recompute`: `fedquad` with recompute taken out of its menu (PlannerConfig.allow_recompute
= False): depth and quantized saved activations only. The ablation that measures what recomputed
blocks (alone or with a quantized stored input) add to FedQuad.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fedquad.planner import PlannerConfig
from fedquad.strategies.fedquad import LEARNED, FedQuad

if TYPE_CHECKING:
    from fedquad.aggregation import AggregationConfig


class FedQuadNoRecompute(FedQuad):
    """`fedquad`'s planner (measured block value, sit-out) without recompute plans."""

    name = "fedquad-no-recompute"
    paper = "FedQuad's planner without recomputed blocks in its menu (ablation)"

    def __init__(self, planner: PlannerConfig = LEARNED, aggregation: AggregationConfig | None = None):
        super().__init__(dataclasses.replace(planner, allow_recompute=False), aggregation)
