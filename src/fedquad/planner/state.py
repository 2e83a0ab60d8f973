"""What the planner remembers between rounds (docs/design.md, "Planner").

Per device: exponential moving averages of measured/predicted round time and memory, and of
reported free memory, so a device that slows down or loses free memory gets a lighter plan next
round. Per block: rounds since someone last trained it (for the coverage option), and an EMA of the
measured value of training it (`observe_gains`: what the learned utility plans with). Per device:
rounds in a row it was sampled but did not train (the sit-out floor). Everything is plain
JSON-able data: to_dict/from_dict make it part of a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedquad.errors import FedquadError
from fedquad.planner.result import DeviceDecision, RoundPlan


@dataclass
class DeviceStats:
    time_ratio: float = field(default=1.0, metadata={"help": "EMA of measured / cost-model round time"})
    memory_ratio: float = field(default=1.0, metadata={"help": "EMA of measured / cost-model memory"})
    memory_ratio_dev: float = field(default=0.0, metadata={
        "help": "EMA of |sample - memory_ratio|: how much the memory ratio scatters"})
    free_bytes: float | None = field(default=None, metadata={"help": "EMA of reported free memory"})
    observations: int = field(default=0, metadata={"help": "measurements folded in"})


class PlannerState:
    def __init__(self, num_blocks: int, ema_alpha: float = 0.3, share_memory_ratio: bool = True,
                 memory_margin: float = 0.0):
        if not 0 < ema_alpha <= 1:
            raise FedquadError(f"ema_alpha must be in (0, 1], got {ema_alpha}")
        if not (math.isfinite(memory_margin) and memory_margin >= 0):
            raise FedquadError(f"memory_margin must be a finite number >= 0, got {memory_margin}")
        self.num_blocks = num_blocks
        self.ema_alpha = ema_alpha
        # EMA of measured/predicted memory over every device: the prior of a device not yet measured.
        # The profile's error is mostly the workload's (e.g. real batches shorter than the profiled
        # length), which every device shares; without it a device that never trains never learns.
        self.share_memory_ratio = share_memory_ratio
        self.shared_memory_ratio = 1.0
        # Plans use ratio + memory_margin * deviation (the deviation is an EMA of |sample - ratio|, as
        # TCP does for round-trip times): the ratio is a mean, and a batch longer than the mean one
        # runs out of memory. 0 plans at the mean.
        self.memory_margin = memory_margin
        self.shared_memory_ratio_dev = 0.0
        self.devices: dict[str, DeviceStats] = {}
        self.rounds_without_trainer = [0] * num_blocks
        self.rounds_recorded = 0
        # measured value of training each block and the head (None: never measured); see observe_gains
        self.block_gain: list[float | None] = [None] * num_blocks
        self.head_gain: float | None = None
        self.untrained_streak: dict[str, int] = {}  # device -> sampled rounds in a row without training

    @classmethod
    def for_config(cls, num_blocks: int, config) -> "PlannerState":
        """A fresh state using config.ema_alpha (a PlannerConfig)."""
        return cls(num_blocks, config.ema_alpha, getattr(config, "share_memory_ratio", True),
                   getattr(config, "memory_margin", 0.0))

    def corrections(self, device_id: str) -> tuple[float, float, float | None]:
        """(time_ratio, memory_ratio, free_bytes) to apply when planning this device; the memory
        ratio includes the safety margin."""
        s = self.devices.get(device_id)
        if s is None:
            return 1.0, self.shared_memory_ratio + self.memory_margin * self.shared_memory_ratio_dev, None
        return s.time_ratio, s.memory_ratio + self.memory_margin * s.memory_ratio_dev, s.free_bytes

    def _ema(self, old: float | None, sample: float) -> float:
        return sample if old is None else (1 - self.ema_alpha) * old + self.ema_alpha * sample

    def _ema_with_dev(self, mean: float, dev: float, sample: float) -> tuple[float, float]:
        """(mean, mean deviation) after one sample; the deviation is measured from the old mean."""
        return self._ema(mean, sample), self._ema(dev, abs(sample - mean))

    def observe(self, decision: DeviceDecision, measured_time_s: float | None = None,
                measured_bytes: float | None = None, free_bytes: float | None = None) -> None:
        """Fold in what a device measured for the plan it was given.

        The decision carries the ratios that were applied to its predictions, so the sample is
        measured / raw cost-model prediction: the EMA tracks the model's error, not its own.
        Ratios start at 1.0 (the model is believed until measurements say otherwise); free memory
        starts at the first report."""
        s = self.devices.setdefault(decision.device_id, DeviceStats(memory_ratio=self.shared_memory_ratio,
                                                                    memory_ratio_dev=self.shared_memory_ratio_dev))
        for name, value in (("measured_time_s", measured_time_s), ("measured_bytes", measured_bytes),
                            ("free_bytes", free_bytes)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise FedquadError(f"{name} must be a finite non-negative number, got {value!r}")
        if measured_time_s is not None and decision.predicted_time_s:
            raw = decision.predicted_time_s / decision.time_ratio
            s.time_ratio = self._ema(s.time_ratio, measured_time_s / raw)
        if measured_bytes is not None and decision.predicted_bytes:
            sample = measured_bytes / (decision.predicted_bytes / decision.memory_ratio)
            s.memory_ratio, s.memory_ratio_dev = self._ema_with_dev(s.memory_ratio, s.memory_ratio_dev, sample)
            if self.share_memory_ratio:
                self.shared_memory_ratio, self.shared_memory_ratio_dev = self._ema_with_dev(
                    self.shared_memory_ratio, self.shared_memory_ratio_dev, sample)
        if free_bytes is not None:
            s.free_bytes = self._ema(s.free_bytes, free_bytes)
        s.observations += 1

    def record_round(self, round_plan: RoundPlan, failed: set[str] | frozenset = frozenset()) -> None:
        """Advance the per-block counters: blocks trained by a device that did not fail reset to 0;
        and the per-device streaks: a device that trained resets to 0, any other sampled one counts up."""
        if round_plan.num_blocks != self.num_blocks:
            raise FedquadError(f"round plan has {round_plan.num_blocks} blocks, state {self.num_blocks}")
        trained = round_plan.trained_blocks(exclude=set(failed))
        self.rounds_without_trainer = [0 if b in trained else n + 1 for b, n in enumerate(self.rounds_without_trainer)]
        for d in round_plan.decisions:
            ok = d.plan is not None and d.device_id not in failed
            self.untrained_streak[d.device_id] = 0 if ok else self.untrained_streak.get(d.device_id, 0) + 1
        self.rounds_recorded += 1

    def observe_gains(self, block_gains, head_gain: float | None) -> None:
        """Fold one round's measured per-block value (None: not measured this round) into the EMAs."""
        if len(block_gains) != self.num_blocks:
            raise FedquadError(f"{len(block_gains)} block gains for {self.num_blocks} blocks")
        for value in (*block_gains, head_gain):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise FedquadError(f"a block gain must be a finite non-negative number, got {value!r}")
        self.block_gain = [old if new is None else self._ema(old, new) for old, new in zip(self.block_gain, block_gains)]
        if head_gain is not None:
            self.head_gain = self._ema(self.head_gain, head_gain)

    def block_values(self) -> tuple[tuple[float, ...], float] | None:
        """(value per block, value of the head) for the learned utility; None before any measurement.

        A block never measured is valued at the mean of the measured ones (no evidence either way:
        the coverage option or a deep device will measure it); so is a head never measured."""
        known = [g for g in (*self.block_gain, self.head_gain) if g is not None]
        if not known:
            return None
        prior = math.fsum(known) / len(known)
        return (tuple(prior if g is None else g for g in self.block_gain),
                prior if self.head_gain is None else self.head_gain)

    def to_dict(self) -> dict:
        return {"num_blocks": self.num_blocks, "ema_alpha": self.ema_alpha, "rounds_recorded": self.rounds_recorded,
                "share_memory_ratio": self.share_memory_ratio, "shared_memory_ratio": self.shared_memory_ratio,
                "memory_margin": self.memory_margin, "shared_memory_ratio_dev": self.shared_memory_ratio_dev,
                "rounds_without_trainer": list(self.rounds_without_trainer),
                "block_gain": list(self.block_gain), "head_gain": self.head_gain,
                "untrained_streak": dict(sorted(self.untrained_streak.items())),
                "devices": {k: {"time_ratio": s.time_ratio, "memory_ratio": s.memory_ratio,
                                "memory_ratio_dev": s.memory_ratio_dev,
                                "free_bytes": s.free_bytes, "observations": s.observations}
                            for k, s in sorted(self.devices.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> "PlannerState":
        try:
            state = cls(int(data["num_blocks"]), float(data["ema_alpha"]), bool(data.get("share_memory_ratio", True)),
                        float(data.get("memory_margin", 0.0)))
            state.shared_memory_ratio = float(data.get("shared_memory_ratio", 1.0))
            state.shared_memory_ratio_dev = float(data.get("shared_memory_ratio_dev", 0.0))
            state.rounds_recorded = int(data.get("rounds_recorded", 0))
            counters = [int(n) for n in data["rounds_without_trainer"]]
            if len(counters) != state.num_blocks:
                raise ValueError(f"rounds_without_trainer has {len(counters)} entries, expected {state.num_blocks}")
            state.rounds_without_trainer = counters
            gains = data.get("block_gain", [None] * state.num_blocks)
            if len(gains) != state.num_blocks:
                raise ValueError(f"block_gain has {len(gains)} entries, expected {state.num_blocks}")
            state.block_gain = [None if g is None else float(g) for g in gains]
            state.head_gain = None if data.get("head_gain") is None else float(data["head_gain"])
            state.untrained_streak = {str(k): int(v) for k, v in data.get("untrained_streak", {}).items()}
            for k, s in data["devices"].items():
                state.devices[str(k)] = DeviceStats(float(s["time_ratio"]), float(s["memory_ratio"]),
                                                    float(s.get("memory_ratio_dev", 0.0)),
                                                    None if s.get("free_bytes") is None else float(s["free_bytes"]),
                                                    int(s.get("observations", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise FedquadError(f"malformed planner state: {exc!r}") from None
        return state
