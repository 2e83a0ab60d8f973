"""Simulated federated fine-tuning: real client training on simulated heterogeneous devices.

`FederatedAlgorithm` is `init() -> state` plus the pure round step `apply(state, clients) ->
(state, report)`; `simulate` runs it with checkpoints and outputs; `compare` runs several
strategies on identical conditions. See docs/simulation.md.
"""

from fedquad.sim.config import SimConfig, load_config
from fedquad.sim.round import FederatedAlgorithm, RoundState
from fedquad.sim.runner import RunResult, simulate
from fedquad.sim.workload import Workload, build_workload

__all__ = ["FederatedAlgorithm", "RoundState", "RunResult", "SimConfig", "Workload", "build_workload",
           "load_config", "simulate"]
