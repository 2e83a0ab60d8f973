"""Simulated federated fine-tuning: real client training on simulated heterogeneous devices.

`FederatedAlgorithm` is `init() -> state` plus the pure round step `apply(state, clients) ->
(state, report)`, built on the round's two halves `begin_round` / `finish_round` (which the Flower
server calls too); `simulate` runs it with checkpoints and outputs; `compare` runs several
strategies on identical conditions. See docs/simulation.md.
"""

from fedquad.sim.config import SimConfig, load_config
from fedquad.sim.round import FederatedAlgorithm, RoundPlan, RoundState, begin_round, finish_round
from fedquad.sim.runner import RunResult, simulate
from fedquad.sim.workload import Workload, build_workload

__all__ = ["FederatedAlgorithm", "RoundPlan", "RoundState", "RunResult", "SimConfig", "Workload", "begin_round",
           "build_workload", "finish_round", "load_config", "simulate"]
