"""`fedquad-paper`: FedQuad's planner with the fixed utility of the paper's formulation, kept so
users can compare it with `fedquad`: v(plan) = depth - penalty[bits] x quantized blocks, U = sum
of the data-weighted values / round time, everyone who fits trains (docs/design.md, "Planner").
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fedquad.planner import PlannerConfig
from fedquad.strategies.fedquad import FedQuad

if TYPE_CHECKING:
    from fedquad.aggregation import AggregationConfig


class FedQuadPaper(FedQuad):
    """FedQuad with value = depth and no sit-out, whatever the planner config says about those two."""

    name = "fedquad-paper"
    paper = "Li et al., FedQuad (arXiv 2506.01001): fixed utility v = depth - penalty per quantized block"

    def __init__(self, planner: PlannerConfig = PlannerConfig(), aggregation: AggregationConfig | None = None):
        # the paper's menu: depth and quantized saved activations, no recomputed blocks
        super().__init__(dataclasses.replace(planner, value="depth", sit_out=False, allow_recompute=False),
                         aggregation)
