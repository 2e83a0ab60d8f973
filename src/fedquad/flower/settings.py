"""Run config of the Flower app (`[tool.flwr.app.config]`, `flwr run --run-config`) -> fedquad settings.

Flower run-config keys use dashes; each workload key is the `SimConfig` field of the same name
(`batch-size` -> `batch_size`), so a strategy gets exactly the settings it gets in `fedquad
simulate`. TOML has no null: an empty string means "none" (no profile file, IID partition, ...).
The remaining keys configure the server process itself (`ServerSettings`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from fedquad.errors import FedquadError
from fedquad.sim.config import SimConfig, from_dict

# SimConfig fields that mean nothing on Flower: the devices are the connected SuperNodes, not a
# simulated scenario, every connected node is asked to train each round, and every run goes its
# full number of rounds.
NOT_ON_FLOWER = ("scenario", "clients_per_round", "time_budget_s", "target_accuracy")


@dataclass(frozen=True)
class ServerSettings:
    run_dir: str = field(default="", metadata={
        "help": "checkpoint and output folder; empty = runs/flower/<run id> under the SuperLink's working directory"})
    resume: bool = field(default=False, metadata={"help": "continue from the checkpoint in run-dir"})
    round_timeout: float = field(default=600.0, metadata={
        "help": "seconds to wait for the replies of one round; nodes that miss it are recorded as timed out"})
    min_nodes: int = field(default=1, metadata={"help": "SuperNodes to wait for before the first round"})
    node_wait_timeout: float = field(default=120.0, metadata={"help": "seconds to wait for min-nodes"})
    query_timeout: float = field(default=120.0, metadata={"help": "seconds to wait for the profile query replies"})
    profile_repeats: int = field(default=3, metadata={
        "help": "timed steps per plan when the server measures the cost-model profile (no profile given)"})
    save_every_round: bool = field(default=False, metadata={
        "help": "also keep the global adapter after every round (rounds/round-NNN.safetensors)"})
    node_budgets: str = field(default="", metadata={
        "help": "budgets for nodes whose node_config sets none (the simulation engine's nodes): fractions of "
                "the model's full-depth footprint by partition-id, comma-separated, e.g. '0.7,0.85,1.1'"})
    eval_data: str = field(default="", metadata={
        "help": "a data file the server owns and evaluates the global adapter on (read with the task's label "
                "vocabulary); empty = the task's evaluation split"})
    federated_eval: bool = field(default=False, metadata={
        "help": "also run Flower's federated evaluation: nodes with a local evaluation split (node_config eval-path, "
                "eval-fraction or a data folder's dev split) evaluate the global adapter, weighted by examples"})
    node_classes: str = field(default="", metadata={
        "help": "device classes for nodes whose node_config sets neither device-class nor speed, by "
                "partition-id, comma-separated, e.g. 'jetson-tx2,jetson-orin-nano,jetson-agx-orin'"})

    def budget_fractions(self) -> list[float]:
        try:
            values = [float(x) for x in self.node_budgets.split(",") if x.strip()]
        except ValueError:
            raise FedquadError(f"run config node-budgets must be comma-separated numbers, got "
                               f"{self.node_budgets!r}") from None
        if any(not v > 0 for v in values):
            raise FedquadError(f"run config node-budgets must be positive, got {self.node_budgets!r}")
        return values

    def classes(self) -> list[str]:
        return [x.strip() for x in self.node_classes.split(",") if x.strip()]


def _value(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip() == "" else value


def parse_run_config(run_config: Mapping[str, Any]) -> tuple[SimConfig, ServerSettings]:
    """(workload config, server settings) from a Flower run config; unknown keys are an error."""
    sim_names = {f.name for f in fields(SimConfig)}
    server_names = {f.name for f in fields(ServerSettings)}
    sim: dict[str, Any] = {}
    server: dict[str, Any] = {}
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name in sim_names and name not in NOT_ON_FLOWER:
            sim[name] = _value(value)
        elif name in server_names:
            server[name] = value
        else:
            raise FedquadError(f"run config: unknown key {key!r}")
    config = from_dict(sim, "run config")
    try:
        settings = ServerSettings(**server)
    except TypeError as exc:
        raise FedquadError(f"run config: {exc}") from None
    if settings.round_timeout <= 0 or settings.min_nodes < 1 or settings.profile_repeats < 1:
        raise FedquadError("run config: round-timeout must be > 0, min-nodes and profile-repeats >= 1")
    settings.budget_fractions()
    if settings.classes():
        from fedquad.devices import device_class
        for name in settings.classes():
            device_class(name)
    return config, settings


def resolve_run_dir(settings: ServerSettings, run_id: int) -> str:
    """Absolute run folder: run-dir as given, or runs/flower/<run id> in the working directory."""
    path = settings.run_dir or os.path.join("runs", "flower", str(run_id))
    return os.path.abspath(os.path.expanduser(path))
