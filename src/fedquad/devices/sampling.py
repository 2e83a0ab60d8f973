"""Sampling a scenario: concrete Devices for a profile, and their state in each round.

`draw_devices` turns a scenario into concrete Devices for a profile (budgets may be relative to
the profiled model), `devices_at_round` applies the dynamics. Both are deterministic functions
of their seed: every random draw comes from a generator seeded by (seed, device, round,
purpose), never from shared state, so round 17 of a run looks the same whether or not rounds
0-16 were computed first (resume, replanning). Pure Python: no torch.
"""

from __future__ import annotations

import dataclasses
import random

from fedquad.costmodel.model import cost_model
from fedquad.costmodel.profile import Profile
from fedquad.devices.catalog import DeviceClass, device_class
from fedquad.devices.device import Device
from fedquad.devices.scenario import Dynamics, Scenario
from fedquad.errors import FedquadError


def _rng(*parts) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across runs and PYTHONHASHSEED
    return random.Random(":".join(str(p) for p in parts))


def budget_bytes_for(scenario: Scenario, profile: Profile, value: float) -> int:
    """A budget value of the scenario's budget_mode in bytes, for this profile's model."""
    cm = cost_model(profile)
    if scenario.budget_mode == "absolute":
        return int(value)
    if scenario.budget_mode == "fraction":
        return int(value * cm.full_footprint_bytes())
    head_only = cm.head_only_bytes()  # "headroom": 0 = head only fits, 1 = full depth unquantized fits
    return int(head_only + value * (cm.full_footprint_bytes() - head_only))


def draw_devices(scenario: Scenario, profile: Profile, seed: int | None = None,
                 catalog: dict[str, DeviceClass] | None = None) -> list[Device]:
    """The scenario's devices for this profile (budgets, speeds, links), before any dynamics."""
    seed = scenario.seed if seed is None else seed
    devices, per_class = [], {}
    for spec in scenario.classes:
        cls = device_class(spec.device_class, catalog)
        base_speed = cls.sustained_gflops / profile.machine_gflops
        up = spec.up or scenario.up
        down = spec.down or scenario.down
        for _ in range(spec.count):
            k = per_class[spec.device_class] = per_class.get(spec.device_class, -1) + 1  # a class may recur
            device_id = f"{spec.device_class}-{k}"
            rng = _rng("fedquad-device", seed, device_id)
            budget = budget_bytes_for(scenario, profile, rng.uniform(spec.budget_low, spec.budget_high))
            if spec.power_mode == "random":
                mode = rng.choice(cls.power_modes)
            else:
                mode = cls.power_mode(cls.default_power_mode if spec.power_mode == "default" else spec.power_mode)
            devices.append(Device(
                device_id=device_id, device_class=spec.device_class, budget_bytes=budget,
                speed=base_speed * mode.speed_factor, up_Bps=up.draw_Bps(rng), down_Bps=down.draw_Bps(rng),
                local_steps=scenario.local_steps, power_mode=mode.name, base_budget_bytes=budget,
                base_speed=base_speed, initial_power_mode=mode.name))
    return devices


def _mode_at_round(cls: DeviceClass, device: Device, dynamics: Dynamics, seed: int, round_index: int) -> str:
    """Mode after the last switch event at or before round_index (a switch re-draws the mode).

    Looking backwards for the last event keeps this O(1/p) and independent of other rounds."""
    p = dynamics.power_mode_switch_prob
    if p > 0:
        for r in range(round_index, 0, -1):
            rng = _rng("fedquad-mode", seed, device.device_id, r)
            if rng.random() < p:
                return rng.choice(cls.power_modes).name
    return device.initial_power_mode or cls.default_power_mode


def devices_at_round(devices: list[Device], scenario: Scenario, round_index: int, seed: int | None = None,
                     catalog: dict[str, DeviceClass] | None = None) -> list[Device]:
    """Each device's state in round `round_index`: power mode, background load, free memory.

    Depends only on the drawn devices, the scenario, the seed and the round: the same arguments
    always give the same states (devices already advanced to some round may be passed back in)."""
    if round_index < 0:
        raise FedquadError(f"round must be >= 0, got {round_index}")
    seed = scenario.seed if seed is None else seed
    dyn = scenario.dynamics
    out = []
    for dev in devices:
        cls = device_class(dev.device_class, catalog)
        base_speed = dev.speed if dev.base_speed is None else dev.base_speed
        base_budget = dev.budget_bytes if dev.base_budget_bytes is None else dev.base_budget_bytes
        mode = cls.power_mode(_mode_at_round(cls, dev, dyn, seed, round_index))
        rng = _rng("fedquad-round", seed, dev.device_id, round_index)
        load = rng.uniform(*dyn.background_load) if rng.random() < dyn.background_load_prob else 0.0
        drop = rng.uniform(*dyn.free_memory_drop) if rng.random() < dyn.free_memory_drop_prob else 0.0
        out.append(dataclasses.replace(
            dev, speed=base_speed * mode.speed_factor * (1.0 - load), power_mode=mode.name, background_load=load,
            budget_bytes=int(base_budget * (1.0 - drop)), base_speed=base_speed, base_budget_bytes=base_budget,
            initial_power_mode=dev.initial_power_mode or mode.name))
    return out
