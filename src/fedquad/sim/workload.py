"""Builders at the edge: model, data, partition, profile and devices of one simulated run.

Everything here is derived from the SimConfig and its seed, so two runs (or a run and its
resume, or every strategy of a `compare`) see the same partition, device draw and sampling.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np

from fedquad.costmodel import Profile, load_profile, profile_from_dict
from fedquad.datasets import DataSettings, PartitionConfig, load_task_data, partition
from fedquad.devices import Device, Scenario, draw_devices, load_scenario, planning_length
from fedquad.errors import FedquadError
from fedquad.sim.files import write_json_atomic
from fedquad.sim.config import SimConfig
from fedquad.tasks import task_kind


@dataclass(frozen=True)
class Workload:
    """The heavy, shared parts of a run, built once from a config. Frozen: `compare` hands one
    workload to every strategy's run, so a run that needs another config takes a copy
    (`dataclasses.replace(workload, config=...)`) instead of changing the shared one."""

    config: SimConfig = field(metadata={"help": "the config the workload was built from (or a run's, in a copy)"})
    adapted: object = field(metadata={"help": "the fedquad.models.AdaptedModel every client trains in turn"})
    train_tokens: object = field(metadata={"help": "TokenizedData of the training subset"})
    eval_tokens: object = field(metadata={"help": "TokenizedData of the central evaluation set"})
    parts: dict[str, np.ndarray] = field(metadata={"help": "device id -> example indices into train_tokens"})
    profile: Profile = field(metadata={"help": "the cost-model profile the run plans and times with"})
    scenario: Scenario = field(metadata={"help": "the device scenario the devices were drawn from"})
    devices: list[Device] = field(metadata={"help": "as drawn (nominal), local_steps and data weights set"})
    initial_state: dict | None = field(default=None, metadata={
        "help": "the adapter as initialised: every run (and every strategy) starts here; None = take it now"})
    eval_source: str = field(default="", metadata={
        "help": "what central evaluation runs on (a split, a file, or a held-out share)"})

    def __post_init__(self) -> None:
        if self.initial_state is None:  # taken before anyone trains: the shared model changes later
            object.__setattr__(self, "initial_state", self.adapted.adapter_state())

    @property
    def device_ids(self) -> list[str]:
        return [d.device_id for d in self.devices]


def _subset(data, n: int | None, seed: int):
    if n is None or n >= len(data):
        return data
    idx = np.sort(np.random.default_rng([seed, 0x5AB5]).choice(len(data), n, replace=False))
    return data.subset(idx.tolist())


def resolve_profile(config: SimConfig, adapted, out_dir: str | None, *, repeats: int = 3,
                    warmup: int = 1, show_progress: bool = True) -> Profile:
    """The configured profile, or one measured here now (saved as profile.json in the run folder).

    A profile.json already in `out_dir` is never taken silently: the run that owns it names it in
    `config.profile` (the run recorder pins it, `fedquad.sim.recorder`); any other is refused, not
    reused nor overwritten. `repeats` / `warmup`: timed and untimed steps per profiled plan when
    measuring. Measuring takes minutes for MiniLM on a small CPU, so it says so and shows progress
    (on stderr) unless `show_progress` is off."""
    if config.profile is not None:
        return load_profile(config.profile)
    cached = os.path.join(out_dir, "profile.json") if out_dir else None
    if cached and os.path.isfile(cached):
        raise FedquadError(f"{out_dir} already holds a profile.json and the config names no profile: set "
                           f"profile={os.path.abspath(cached)} to use it, or remove it to measure a new one")
    from fedquad.client.saved_activations import QuantSettings
    from fedquad.diagnostics.memory import generated_batch, perturb_adapters
    from fedquad.diagnostics.profile import profile_model, profile_steps
    from fedquad.sim.progress import StepProgress, note

    note(f"no profile configured: measuring one for {config.model} on this machine (batch {config.batch_size} x "
         f"{config.max_len}){f', saved to {cached}' if cached else ''}; set profile= to a shipped or saved "
         f"profile to skip this", show_progress)
    state = adapted.adapter_state()
    perturb_adapters(adapted, seed=config.seed)
    batch = generated_batch(adapted, config.batch_size, config.max_len, config.seed)
    with StepProgress(f"profiling {config.model}", profile_steps(adapted.num_blocks, repeats, warmup),
                      enabled=show_progress) as bar:
        data = profile_model(adapted, batch, quant=QuantSettings(group_size=config.group_size), repeats=repeats,
                             warmup=warmup, progress=bar)
    adapted.load_adapter_state(state)
    if cached:
        write_json_atomic(cached, data)  # profile_model's document is validated by the format owner
    return profile_from_dict(data, "measured profile")


def build_workload(config: SimConfig, out_dir: str | None = None, show_progress: bool = True) -> Workload:
    adapted, train_tokens, eval_tokens, labels, eval_source = _load_model_and_data(config)
    profile = resolve_profile(config, adapted, out_dir, show_progress=show_progress)
    if profile.group_size != config.group_size:
        raise FedquadError(f"the profile was measured at quantization group size {profile.group_size}, the config "
                           f"uses {config.group_size}: kept bytes would be mispredicted; set group_size="
                           f"{profile.group_size} or measure a profile at {config.group_size}")
    if profile.num_blocks != adapted.num_blocks:
        raise FedquadError(f"profile is for {profile.num_blocks} blocks, {config.model} has {adapted.num_blocks}")
    scenario = load_scenario(config.scenario)
    drawn = draw_devices(scenario, profile, seed=config.seed)
    if config.clients_per_round > len(drawn):
        raise FedquadError(f"clients_per_round {config.clients_per_round} exceeds the scenario's {len(drawn)} devices")
    parts_list = partition_examples(config, labels, len(drawn))
    parts = {d.device_id: p for d, p in zip(drawn, parts_list)}
    devices = [dataclasses.replace(d, local_steps=config.local_steps, data_weight=float(len(parts[d.device_id])),
                                   seq_len_tokens=device_length(config, train_tokens.lengths[parts[d.device_id]]))
               for d in drawn]
    return Workload(config, adapted, train_tokens, eval_tokens, parts, profile, scenario, devices,
                    eval_source=eval_source)


def device_length(config: SimConfig, lengths: np.ndarray) -> int | None:
    """`Device.seq_len_tokens` for a device holding examples of `lengths` tokens (batches pad to
    their longest example, fedquad.datasets.batching); None when the config plans every device at
    the profile's length, or the device has no examples."""
    if not config.plan_at_device_length or len(lengths) == 0:
        return None
    return planning_length(int(lengths.max()), config.max_len)


def partition_examples(config: SimConfig, labels: np.ndarray, num_parts: int) -> list[np.ndarray]:
    """The seeded Dirichlet (or IID) split of the training subset over `num_parts` devices or nodes."""
    return partition(np.asarray(labels), PartitionConfig(num_parts, config.partition_alpha, seed=config.seed))


def load_model_and_data(config: SimConfig) -> tuple[object, object, object, np.ndarray]:
    """(adapted model, train tokens, eval tokens, train labels) of `config`: everything of a run that
    does not depend on the devices. The simulator and the Flower apps both load through here."""
    return _load_model_and_data(config)[:4]


def data_settings(config: SimConfig) -> DataSettings:
    """The data-reading settings of `config` (columns, labels, evaluation data; docs/data.md)."""
    return DataSettings(text_column=config.text_column, text_pair_column=config.text_pair_column,
                        label_column=config.label_column, label_names=config.label_names,
                        eval_split=config.eval_split, eval_file=config.eval_file,
                        eval_fraction=config.eval_fraction, seed=config.seed)


def _load_model_and_data(config: SimConfig) -> tuple[object, object, object, np.ndarray, str]:
    from fedquad.models import LoraSettings, load_model
    from fedquad.models.presets import DECODER_FAMILIES, PRESETS

    data = load_task_data(config.task, data_settings(config), data_root=config.data_root)
    # The training subset is drawn after any held-out share is set aside: it never reaches evaluation.
    train = _subset(data.train, config.train_examples, config.seed)
    kind = task_kind(train)  # the one place a run decides: classification or causal LM, by the data it loaded
    preset = PRESETS.get(config.model)
    if kind.needs_decoder and preset is not None and preset.family not in DECODER_FAMILIES:
        raise FedquadError(f"task {config.task} is causal-LM data but {config.model} is not a decoder model")
    evaluation = data.evaluation
    adapted = load_model(config.model, task=kind.head, num_labels=kind.model_num_labels(train),
                         lora=LoraSettings(rank=config.lora_rank, alpha=config.lora_alpha), seed=config.seed,
                         device="cpu")
    train_tokens = kind.tokenize(train, adapted.tokenizer, config.max_len)
    eval_tokens = kind.tokenize(evaluation, adapted.tokenizer, config.max_len)
    source = data.eval_source
    if config.eval_examples is not None and config.eval_examples < len(eval_tokens):  # say it is a subset
        source += f", fixed seeded subset of {config.eval_examples} of {len(eval_tokens)} (eval_examples)"
    return adapted, train_tokens, eval_tokens, np.asarray(train.labels), source
