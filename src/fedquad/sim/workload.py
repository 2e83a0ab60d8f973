"""Builders at the edge: model, data, partition, profile and devices of one simulated run.

Everything here is derived from the SimConfig and its seed, so two runs (or a run and its
resume, or every strategy of a `compare`) see the same partition, device draw and sampling.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from fedquad.costmodel import Profile, load_profile, profile_from_dict
from fedquad.datasets import PartitionConfig, load_task, partition, tokenize
from fedquad.devices import Device, Scenario, draw_devices, load_scenario
from fedquad.errors import FedquadError
from fedquad.sim.config import SimConfig


@dataclass
class Workload:
    config: SimConfig
    adapted: object  # fedquad.models.AdaptedModel
    train_tokens: object  # TokenizedData
    eval_tokens: object
    parts: dict[str, np.ndarray]  # device id -> example indices into train_tokens
    profile: Profile
    scenario: Scenario
    devices: list[Device]  # as drawn (nominal), local_steps and data weights set
    initial_state: dict = None  # the adapter as initialised: every run (and every strategy) starts here

    def __post_init__(self) -> None:
        if self.initial_state is None:  # taken before anyone trains: the shared model changes later
            self.initial_state = self.adapted.adapter_state()

    @property
    def device_ids(self) -> list[str]:
        return [d.device_id for d in self.devices]


def _subset(data, n: int | None, seed: int):
    if n is None or n >= len(data):
        return data
    idx = np.sort(np.random.default_rng([seed, 0x5AB5]).choice(len(data), n, replace=False))
    return data.subset(idx.tolist())


def resolve_profile(config: SimConfig, adapted, out_dir: str | None, *, repeats: int = 3,
                    warmup: int = 1) -> Profile:
    """The configured profile, or one measured here now (saved as profile.json in the run folder).

    `repeats` / `warmup`: timed and untimed steps per profiled plan when measuring."""
    if config.profile is not None:
        return load_profile(config.profile)
    cached = os.path.join(out_dir, "profile.json") if out_dir else None
    if cached and os.path.isfile(cached):
        return load_profile(cached)
    import json

    from fedquad.client.saved_activations import QuantSettings
    from fedquad.diagnostics.memory import generated_batch, perturb_adapters
    from fedquad.diagnostics.profile import profile_model

    state = adapted.adapter_state()
    perturb_adapters(adapted, seed=config.seed)
    batch = generated_batch(adapted, config.batch_size, config.max_len, config.seed)
    data = profile_model(adapted, batch, quant=QuantSettings(group_size=config.group_size), repeats=repeats,
                         warmup=warmup)
    adapted.load_adapter_state(state)
    if cached:
        tmp = cached + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, cached)
    return profile_from_dict(data, "measured profile")


def build_workload(config: SimConfig, out_dir: str | None = None) -> Workload:
    adapted, train_tokens, eval_tokens, labels = load_model_and_data(config)
    profile = resolve_profile(config, adapted, out_dir)
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
    devices = [dataclasses.replace(d, local_steps=config.local_steps, data_weight=float(len(parts[d.device_id])))
               for d in drawn]
    return Workload(config, adapted, train_tokens, eval_tokens, parts, profile, scenario, devices)


def partition_examples(config: SimConfig, labels: np.ndarray, num_parts: int) -> list[np.ndarray]:
    """The seeded Dirichlet (or IID) split of the training subset over `num_parts` devices or nodes."""
    return partition(np.asarray(labels), PartitionConfig(num_parts, config.partition_alpha, seed=config.seed))


def load_model_and_data(config: SimConfig) -> tuple[object, object, object, np.ndarray]:
    """(adapted model, train tokens, eval tokens, train labels) of `config`: everything of a run that
    does not depend on the devices. The simulator and the Flower apps both load through here."""
    from fedquad.models import LoraSettings, load_model
    from fedquad.models.presets import DECODER_FAMILIES, PRESETS

    train = _subset(load_task(config.task, "train", data_root=config.data_root), config.train_examples, config.seed)
    lm = bool(getattr(train, "is_causal", False))  # causal-LM data (prompt/response or text) says so
    preset = PRESETS.get(config.model)
    if lm and preset is not None and preset.family not in DECODER_FAMILIES:
        raise FedquadError(f"task {config.task} is causal-LM data but {config.model} is not a decoder model")
    eval_split = _eval_split(config)
    evaluation = _subset(load_task(config.task, eval_split, data_root=config.data_root), None, config.seed)
    task = "causal-lm" if lm else "seq-cls"
    num_labels = 2 if lm else max(int(train.num_labels), 2)
    adapted = load_model(config.model, task=task, num_labels=num_labels,
                         lora=LoraSettings(rank=config.lora_rank, alpha=config.lora_alpha), seed=config.seed,
                         device="cpu")
    train_tokens = tokenize(train, adapted.tokenizer, config.max_len)
    eval_tokens = tokenize(evaluation, adapted.tokenizer, config.max_len)
    return adapted, train_tokens, eval_tokens, np.asarray(train.labels)


def _eval_split(config: SimConfig) -> str:
    from fedquad.datasets import TASKS
    name = config.task.lower().replace("-", "_")
    spec = TASKS.get(name)
    return spec.eval_split if spec is not None else "dev"
