"""`depth-only`: FedQuad's planner with q = 0, i.e. adaptive LoRA depth alone, in the spirit of
LEGEND (Liu et al., "Adaptive LoRA depth ... for federated fine-tuning", 2024). The ablation that
shows what quantized saved activations add on top of depth adaptation.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fedquad.planner import PlannerConfig
from fedquad.strategies.fedquad import LEARNED, FedQuad

if TYPE_CHECKING:
    from fedquad.aggregation import AggregationConfig


class DepthOnly(FedQuad):
    """`fedquad`'s planner (measured block value, sit-out) restricted to unquantized plans."""

    name = "depth-only"
    paper = "LEGEND-style adaptive depth (Liu et al., 2024), as FedQuad's planner without quantization"

    def __init__(self, planner: PlannerConfig = LEARNED, aggregation: AggregationConfig | None = None):
        super().__init__(dataclasses.replace(planner, allow_quant=False, allow_recompute=False), aggregation)
