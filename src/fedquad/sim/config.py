"""Configuration of a simulated federated run: one frozen dataclass, read from JSON/TOML plus
`key=value` overrides. Every field has help text (`fedquad simulate --help-config` prints it)."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields

from fedquad.errors import FedquadError
from fedquad.plan import DEFAULT_GROUP_SIZE

MAX_SEED = 2**63 - 1  # numpy, torch and random all accept [0, MAX_SEED]; negatives crash numpy


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
    # own data files (docs/data.md): columns, label vocabulary, evaluation data
    text_column: str | int | None = field(default=None, metadata={
        "help": "text column of a data file: header name or 0-based index; None = the first of sentence1, "
                "#1 String, question1, question, premise, sentence, text in the header"})
    text_pair_column: str | int | None = field(default=None, metadata={
        "help": "second-text column of pair data; None = the partner of the text column found (sentence2, "
                "#2 String, question2, sentence, hypothesis, text_pair) if present"})
    label_column: str | int | None = field(default=None, metadata={
        "help": "label column: header name or 0-based index; None = the first of label, Quality, labels, "
                "gold_label in the header"})
    label_names: tuple[str, ...] | None = field(default=None, metadata={
        "help": "the label vocabulary in class order, e.g. [\"neg\", \"pos\"] or \"neg,pos\"; None = the "
                "training data's (integers as they are, text labels sorted)"})
    eval_split: str | None = field(default=None, metadata={
        "help": "evaluation split: a data folder's <name>.tsv/.csv/.jsonl/.json/.parquet or a built-in task's "
                "split; None = dev, validation or test (the first present; built-in tasks: their own)"})
    eval_file: str | None = field(default=None, metadata={
        "help": "a data file to evaluate on, read with the training data's columns and labels"})
    eval_fraction: float = field(default=0.2, metadata={
        "help": "share of a single data file (or of a folder without an evaluation split) held out, seeded "
                "and per label, for evaluation; never trained on"})
    max_len: int = field(default=64, metadata={"help": "tokens per example at most"})
    batch_size: int = field(default=16, metadata={"help": "local batch size"})
    lora_rank: int = field(default=8, metadata={"help": "global LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    # devices and rounds
    scenario: str = field(default="jetson-mixed", metadata={"help": "shipped scenario name or scenario JSON path"})
    profile: str | None = field(default=None, metadata={
        "help": "cost-model profile (shipped name or JSON path); None = measure it on this machine at start"})
    strategy: str = field(default="fedquad", metadata={"help": "fedquad, fedquad-paper, fedquad-no-recompute, fedlora, "
                                                              "fedlora-ckpt, fedlora-uniform, hetlora, fedra, depth-only, quant-only"})
    rounds: int = field(default=20, metadata={"help": "rounds at most"})
    time_budget_s: float | None = field(default=None, metadata={"help": "stop once the simulated clock passes this"})
    clients_per_round: int = field(default=8, metadata={"help": "devices sampled per round"})
    local_steps: int = field(default=5, metadata={"help": "local optimizer steps per round"})
    learning_rate: float = field(default=1e-3, metadata={"help": "local AdamW learning rate"})
    logit_adjustment: float = field(default=1.0, metadata={
        "help": "classification: train on logits + tau * log(the client's label shares) (logit adjustment; "
                "evaluation uses the plain logits), so label-skewed clients do not drag the global head to "
                "their majority class; this is tau, 0 = off (benchmarks/learning_probe.py measures why)"})
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
    planner_value: str = field(default="learned", metadata={
        "help": "fedquad/depth-only: what a trained block is worth: learned (measured every round) or depth "
                "(fixed, as fedquad-paper)"})
    sit_out: bool = field(default=True, metadata={
        "help": "fedquad/depth-only: a straggler sits out when the round gains more time than its data is worth"})
    sit_out_floor_rounds: int = field(default=2, metadata={
        "help": "fedquad/depth-only: a device sampled and untrained this many rounds in a row must train"})
    sit_out_max_fraction: float = field(default=0.5, metadata={
        "help": "fedquad/depth-only: at most this fraction of a round's participants may sit out, in [0, 1)"})
    planner_value_exponent: float = field(default=1.0, metadata={
        "help": "fedquad/depth-only: round utility (data share x block value) ** e / round time; e < 1 makes value "
                "saturate, so stragglers sit out or go shallower more readily; in (0, 1]"})
    plan_at_device_length: bool = field(default=True, metadata={
        "help": "every strategy plans and charges a device at its longest batch's padded length (its data's "
                "longest example, rounded up to 8 tokens) instead of the profile's length"})
    placement: str = field(default="bottom", metadata={"help": "quantized blocks at the bottom or top of the segment"})
    quant_bits: tuple[int, ...] = field(default=(8, 4), metadata={
        "help": "bit widths the FedQuad planner may choose, e.g. [8] to rule out int4"})
    group_size: int = field(default=DEFAULT_GROUP_SIZE, metadata={
        "help": "quantization group size; must match the profile's (fedquad.plan.DEFAULT_GROUP_SIZE, as every "
                "entry point)"})
    max_update_norm_ratio: float = field(default=10.0, metadata={
        "help": "aggregation: reject a client tensor whose L2 norm exceeds this many times the global "
                "tensor's, or a root-mean-square of 1.0 per element if larger (LoRA B starts at zero)"})
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
        if not (isinstance(self.logit_adjustment, (int, float)) and 0 <= self.logit_adjustment < float("inf")):
            raise FedquadError(f"config logit_adjustment must be a number >= 0, got {self.logit_adjustment!r}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise FedquadError(f"config target_accuracy must be in (0, 1], got {self.target_accuracy}")
        if not (isinstance(self.memory_margin, (int, float)) and 0 <= self.memory_margin < float("inf")):
            raise FedquadError(f"config memory_margin must be a number >= 0, got {self.memory_margin!r}")
        if isinstance(self.max_update_norm_ratio, bool) or not (
                isinstance(self.max_update_norm_ratio, (int, float)) and 0 < self.max_update_norm_ratio < float("inf")):
            raise FedquadError(f"config max_update_norm_ratio must be a number > 0, got {self.max_update_norm_ratio!r}")
        if self.planner_value not in ("learned", "depth"):
            raise FedquadError(f"config planner_value must be learned or depth, got {self.planner_value!r}")
        for name in ("sit_out", "plan_at_device_length"):
            if not isinstance(getattr(self, name), bool):
                raise FedquadError(f"config {name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.sit_out_floor_rounds, bool) or not isinstance(self.sit_out_floor_rounds, int) \
                or self.sit_out_floor_rounds < 0:
            raise FedquadError(f"config sit_out_floor_rounds must be an integer >= 0, got {self.sit_out_floor_rounds!r}")
        if isinstance(self.sit_out_max_fraction, bool) or not (
                isinstance(self.sit_out_max_fraction, (int, float)) and 0 <= self.sit_out_max_fraction < 1):
            raise FedquadError(f"config sit_out_max_fraction must be a number in [0, 1), got {self.sit_out_max_fraction!r}")
        if isinstance(self.planner_value_exponent, bool) or not (
                isinstance(self.planner_value_exponent, (int, float)) and 0 < self.planner_value_exponent <= 1):
            raise FedquadError(f"config planner_value_exponent must be a number in (0, 1], got "
                               f"{self.planner_value_exponent!r}")
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
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise FedquadError(f"config seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")
        self._check_data_settings()

    def _check_data_settings(self) -> None:
        for name in ("text_column", "text_pair_column", "label_column"):
            v = getattr(self, name)
            if isinstance(v, str) and v.strip().isdigit():  # `--set label_column=0` arrives as text
                v = int(v)
                object.__setattr__(self, name, v)
            if v is not None and not _is_column(v):
                raise FedquadError(f"config {name} must be a column name or a 0-based index, got {v!r}")
        names = self.label_names
        if isinstance(names, str):  # "neg,pos": a TOML run config has no lists
            names = [n.strip() for n in names.split(",")]
        if names is not None:
            if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) and n for n in names)
                    and len(set(names)) == len(names)):
                raise FedquadError(f"config label_names must be a list of distinct non-empty names, "
                                   f"got {self.label_names!r}")
            object.__setattr__(self, "label_names", tuple(names))
        for name in ("eval_split", "eval_file"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise FedquadError(f"config {name} must be a non-empty string or null, got {v!r}")
        if self.eval_split is not None and self.eval_file is not None:
            raise FedquadError("config: set eval_split or eval_file, not both")
        f = self.eval_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise FedquadError(f"config eval_fraction must be a number between 0 and 1 (exclusive), got {f!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "SimConfig":
        return from_dict({**self.to_dict(), **changes})


def _is_column(v) -> bool:
    """A header name (not empty, not a negative number) or a 0-based index."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return v >= 0
    return isinstance(v, str) and bool(v.strip()) and not v.strip().lstrip("-").isdigit()


def field_help() -> list[tuple[str, str, str]]:
    """(name, default, help) of every field, for `--help-config` and the docs."""
    return [(f.name, repr(f.default), f.metadata.get("help", "")) for f in fields(SimConfig)]


# What a setting's annotation allows, in words and as a check. Annotations are strings here
# (`from __future__ import annotations`); a kind not listed is not type-checked.
_KINDS = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "None": ("null", lambda v: v is None),
    "tuple[int, ...]": ("a list of integers such as [8, 4]",
                        lambda v: isinstance(v, (list, tuple)) and all(
                            isinstance(x, int) and not isinstance(x, bool) for x in v)),
}


def _kinds(name: str) -> list[str] | None:
    kinds = [k.strip() for k in str({f.name: f for f in fields(SimConfig)}[name].type).split("|")]
    return kinds if all(k in _KINDS for k in kinds) else None


def setting_type_error(name: str, value) -> str | None:
    """Why `value` cannot be setting `name` (its name, the value and the expected type), or None."""
    kinds = _kinds(name)
    if kinds is None or any(_KINDS[k][1](value) for k in kinds):
        return None
    return f"{name} expects {' or '.join(_KINDS[k][0] for k in kinds)}, got {value!r}"


def _check_known(data: dict, source: str) -> None:
    known = [f.name for f in fields(SimConfig)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise FedquadError(f"{source}: unknown setting {unknown[0]!r}; known: {', '.join(known)}")


def from_dict(data: dict, source: str = "config") -> SimConfig:
    if not isinstance(data, dict):
        raise FedquadError(f"{source}: settings must be a table (JSON object), got {type(data).__name__}")
    _check_known(data, source)
    for name, value in data.items():
        problem = setting_type_error(name, value)
        if problem:
            raise FedquadError(f"{source}: setting {problem}")
    try:
        return SimConfig(**data)
    except TypeError as exc:
        raise FedquadError(f"{source}: {exc}") from None
    except FedquadError as exc:  # a value check of SimConfig: say where the value came from
        if source == "config":
            raise
        raise FedquadError(f"{source}: {exc}") from None


# Settings added after runs were already written, with the value that reproduces such a run: a
# run's own config.json lists every setting, so one missing was made before the setting existed.
SETTINGS_BEFORE_THEY_EXISTED = {"plan_at_device_length": False}


def run_config_from_dict(data: dict, source: str = "config") -> SimConfig:
    """A config a run wrote (config.json, checkpoint, compare plan): as `from_dict`, but a setting
    added since then takes the value the run was made with, not today's default."""
    if isinstance(data, dict):
        data = {**{k: v for k, v in SETTINGS_BEFORE_THEY_EXISTED.items() if k not in data}, **data}
    return from_dict(data, source)


def _parse_value(name: str, text: str):
    """`key=value` overrides: JSON literals (numbers, null, true, [8, 4]) or else a plain string;
    a setting that takes a string gets the text as written (`--set data_root=2024` is "2024")."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    kinds = _kinds(name) or []
    if "str" in kinds and not isinstance(value, str) and not (value is None and "None" in kinds):
        return text
    return value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, str, object]]:
    """(item, key, value) of every `--set key=value`, each checked for a known key and its type."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise FedquadError(f"--set {item!r} is not KEY=VALUE (e.g. --set rounds=30)")
        key, _, text = item.partition("=")
        key = key.strip().replace("-", "_")
        _check_known({key: None}, f"--set {item}")
        value = _parse_value(key, text.strip())
        problem = setting_type_error(key, value)
        if problem:
            raise FedquadError(f"--set {item}: {problem}")
        parsed.append((item, key, value))
    return parsed


def _read_file(path: str) -> dict:
    if os.path.isdir(path):
        raise FedquadError(f"config file {path} is a directory, not a JSON or TOML file")
    if not os.path.exists(path):
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
    except (OSError, UnicodeDecodeError) as exc:
        raise FedquadError(f"cannot read config file {path}: {exc}") from None
    if isinstance(data, dict) and "simulation" in data:
        data = data["simulation"]
    if not isinstance(data, dict):
        raise FedquadError(f"config file {path} must hold a table of settings (a JSON object or TOML table), "
                           f"got a {type(data).__name__}")
    return data


def load_config(path: str | None = None, overrides: list[str] = ()) -> SimConfig:
    """Defaults, then the file (JSON or TOML, optionally under a [simulation] table), then overrides.

    An error names where the bad value came from: the file, or the `--set` that broke it."""
    data = _read_file(path) if path is not None else {}
    source = f"config file {path}" if path is not None else "config"
    base = from_dict(data, source)  # the file alone: its own mistakes are its own
    parsed = parse_overrides(overrides)
    for item, key, value in parsed:
        data = {**data, key: value}
        try:
            from_dict(data, f"--set {item}")
        except FedquadError as exc:
            message = str(exc)
            raise FedquadError(message if message.startswith("--set") else f"--set {item}: {message}") from None
    return from_dict(data, source) if parsed else base
