"""Configuration of a simulated federated run: one frozen dataclass, read from JSON/TOML plus
`key=value` overrides. Every field has help text (`fedquad simulate --help-config` prints it)."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields

from fedquad.errors import FedquadError


@dataclass(frozen=True)
class SimConfig:
    # workload
    model: str = field(default="minilm", metadata={"help": "model preset or local model directory"})
    task: str = field(default="synthetic", metadata={
        "help": "data: synthetic, synthetic-lm, sst2, mrpc, rte, ag_news, a data folder or file"})
    data_root: str | None = field(default=None, metadata={"help": "folder holding sst2/, mrpc/, ... (default: shared/data)"})
    train_examples: int | None = field(default=4000, metadata={
        "help": "use a seeded subset of this many training examples (None = all)"})
    eval_examples: int | None = field(default=500, metadata={"help": "central evaluation subset size (None = all)"})
    max_len: int = field(default=64, metadata={"help": "tokens per example at most"})
    batch_size: int = field(default=16, metadata={"help": "local batch size"})
    lora_rank: int = field(default=8, metadata={"help": "global LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    # devices and rounds
    scenario: str = field(default="jetson-mixed", metadata={"help": "shipped scenario name or scenario JSON path"})
    profile: str | None = field(default=None, metadata={
        "help": "cost-model profile (shipped name or JSON path); None = measure it on this machine at start"})
    strategy: str = field(default="fedquad", metadata={"help": "fedquad, fedlora, fedlora-uniform, hetlora, fedra, "
                                                              "depth-only, quant-only"})
    rounds: int = field(default=20, metadata={"help": "rounds at most"})
    time_budget_s: float | None = field(default=None, metadata={"help": "stop once the simulated clock passes this"})
    clients_per_round: int = field(default=8, metadata={"help": "devices sampled per round"})
    local_steps: int = field(default=5, metadata={"help": "local optimizer steps per round"})
    learning_rate: float = field(default=1e-3, metadata={"help": "local AdamW learning rate"})
    partition_alpha: float | None = field(default=0.5, metadata={"help": "Dirichlet alpha over labels; None = IID"})
    eval_every: int = field(default=2, metadata={"help": "evaluate centrally every k rounds (and after the last)"})
    target_accuracy: float | None = field(default=None, metadata={"help": "stop early once reached (None = never)"})
    # method knobs
    coverage_rounds: int | None = field(default=None, metadata={"help": "FedQuad coverage option K (None = off)"})
    int8_penalty: float = field(default=0.05, metadata={"help": "FedQuad utility penalty per int8 block"})
    int4_penalty: float = field(default=0.2, metadata={"help": "FedQuad utility penalty per int4 block"})
    memory_margin: float = field(default=0.0, metadata={
        "help": "FedQuad/depth-only planner: plan memory at the measured/predicted ratio + this many mean "
                "deviations of it (0 = at the mean)"})
    placement: str = field(default="bottom", metadata={"help": "quantized blocks at the bottom or top of the segment"})
    quant_bits: tuple[int, ...] = field(default=(8, 4), metadata={
        "help": "bit widths the FedQuad planner may choose, e.g. [8] to rule out int4"})
    group_size: int = field(default=128, metadata={
        "help": "quantization group size; must match the profile's (the shipped profiles use 128)"})
    seed: int = field(default=0, metadata={"help": "seed of data split, device draw, sampling and training"})

    def __post_init__(self) -> None:
        for name in ("max_len", "batch_size", "lora_rank", "lora_alpha", "rounds", "clients_per_round",
                     "local_steps", "eval_every", "group_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FedquadError(f"config {name} must be a positive integer, got {value!r}")
        for name in ("train_examples", "eval_examples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise FedquadError(f"config {name} must be a positive integer or null, got {value!r}")
        if not self.learning_rate > 0:
            raise FedquadError(f"config learning_rate must be > 0, got {self.learning_rate}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise FedquadError(f"config target_accuracy must be in (0, 1], got {self.target_accuracy}")
        if not (isinstance(self.memory_margin, (int, float)) and 0 <= self.memory_margin < float("inf")):
            raise FedquadError(f"config memory_margin must be a number >= 0, got {self.memory_margin!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise FedquadError(f"config time_budget_s must be > 0, got {self.time_budget_s}")
        object.__setattr__(self, "quant_bits", tuple(self.quant_bits))  # JSON gives a list
        if not self.quant_bits or any(b not in (4, 8) for b in self.quant_bits):
            raise FedquadError(f"config quant_bits must be a non-empty subset of [8, 4], got {list(self.quant_bits)}")
        from fedquad.strategies import STRATEGIES  # pure Python: no torch
        if self.strategy not in STRATEGIES:
            raise FedquadError(f"config strategy: unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.placement not in ("bottom", "top"):
            raise FedquadError(f"config placement must be bottom or top, got {self.placement!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "SimConfig":
        return from_dict({**self.to_dict(), **changes})


def field_help() -> list[tuple[str, str, str]]:
    """(name, default, help) of every field, for `--help-config` and the docs."""
    return [(f.name, repr(f.default), f.metadata.get("help", "")) for f in fields(SimConfig)]


def from_dict(data: dict, source: str = "config") -> SimConfig:
    known = {f.name: f for f in fields(SimConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise FedquadError(f"{source}: unknown setting {unknown[0]!r}; known: {', '.join(known)}")
    try:
        return SimConfig(**data)
    except TypeError as exc:
        raise FedquadError(f"{source}: {exc}") from None


def _parse_value(name: str, text: str):
    """`key=value` overrides: JSON literals (numbers, null, true) or else a plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(path: str | None = None, overrides: list[str] = ()) -> SimConfig:
    """Defaults, then the file (JSON or TOML, optionally under a [simulation] table), then overrides."""
    data: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise FedquadError(f"config file {path} does not exist")
        try:
            if path.endswith(".toml"):
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            else:
                with open(path) as f:
                    data = json.load(f)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise FedquadError(f"config file {path} cannot be parsed: {exc}") from None
        data = data.get("simulation", data)
        if not isinstance(data, dict):
            raise FedquadError(f"config file {path} must hold a table of settings")
    for item in overrides:
        if "=" not in item:
            raise FedquadError(f"override {item!r} is not key=value")
        key, _, value = item.partition("=")
        data[key.strip().replace("-", "_")] = _parse_value(key, value.strip())
    return from_dict(data, path or "overrides")
