"""The device as the planner, the strategies and the simulator's clock see it in one round.

A plain frozen record (no torch, no scenario logic): `fedquad.devices.sampling` makes Devices
from a scenario, the Flower node makes one from its own measurements, and everything above
the planner only reads them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Device:
    device_id: str = field(metadata={"help": "stable id, e.g. jetson-tx2-0"})
    device_class: str = field(metadata={"help": "catalog class name"})
    budget_bytes: int = field(metadata={"help": "memory the plan may use this round"})
    speed: float = field(metadata={"help": "throughput relative to the profiling machine this round"})
    up_Bps: float = field(metadata={"help": "upload bandwidth, bytes per second"})
    down_Bps: float = field(metadata={"help": "download bandwidth, bytes per second"})
    local_steps: int = field(default=1, metadata={"help": "training steps per round"})
    data_weight: float = field(default=1.0, metadata={"help": "relative amount of local data (utility weight)"})
    power_mode: str = field(default="", metadata={"help": "power mode this round"})
    background_load: float = field(default=0.0, metadata={"help": "fraction of compute taken by other work"})
    base_budget_bytes: int | None = field(default=None, metadata={"help": "budget before free-memory drops"})
    base_speed: float | None = field(default=None, metadata={"help": "speed in the fastest mode, no load"})
    initial_power_mode: str = field(default="", metadata={"help": "power mode drawn with the device"})
    seq_len_tokens: int | None = field(default=None, metadata={
        "help": "padded length of the device's longest batch, which its plan must fit; None: the profile's length"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LENGTH_STEP_TOKENS = 8


def planning_length(longest_tokens: int, max_len: int | None = None) -> int:
    """The length a device is planned at (`Device.seq_len_tokens`): its longest example, which is
    its longest batch's padded width, rounded up to 8 tokens so devices of similar data share one
    planner menu, and never beyond the run's `max_len` (examples are truncated to it)."""
    if longest_tokens < 1:
        raise ValueError(f"a device's longest example must have at least one token, got {longest_tokens}")
    rounded = -(-int(longest_tokens) // LENGTH_STEP_TOKENS) * LENGTH_STEP_TOKENS
    return rounded if max_len is None else min(int(max_len), rounded)
