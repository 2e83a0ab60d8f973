"""Scenarios: which devices take part, their budgets and links, and how they change per round.

A scenario JSON names counts per device class, a memory budget range per class, bandwidth
distributions and per-round dynamics. This module holds the scenario types and the file format
(`parse_scenario`, `load_scenario`: every mistake in a file is a one-line error naming the field);
turning a scenario into Devices is `fedquad.devices.sampling`. Pure Python: no torch.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from importlib import resources

from fedquad.devices.catalog import DeviceClass, load_catalog
from fedquad.errors import FedquadError

SCENARIO_DIR = "resources/scenarios"
BUDGET_MODES = ("absolute", "fraction", "headroom")


@dataclass(frozen=True)
class BandwidthDist:
    kind: str = field(metadata={"help": "uniform (low..high), lognormal (median, sigma) or fixed (low)"})
    low_Mbps: float = field(default=0.0, metadata={"help": "uniform lower bound, or the fixed value"})
    high_Mbps: float = field(default=0.0, metadata={"help": "uniform upper bound"})
    median_Mbps: float = field(default=0.0, metadata={"help": "lognormal median"})
    sigma: float = field(default=0.0, metadata={"help": "lognormal sigma of log(Mbit/s)"})

    def draw_Bps(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            mbps = rng.uniform(self.low_Mbps, self.high_Mbps)
        elif self.kind == "lognormal":
            mbps = rng.lognormvariate(math.log(self.median_Mbps), self.sigma)
        else:
            mbps = self.low_Mbps
        return mbps * 1e6 / 8


@dataclass(frozen=True)
class ClassSpec:
    device_class: str = field(metadata={"help": "catalog class name"})
    count: int = field(metadata={"help": "devices of this class"})
    budget_low: float = field(metadata={"help": "lower end of the budget range, in the scenario's budget_mode"})
    budget_high: float = field(metadata={"help": "upper end of the budget range"})
    power_mode: str = field(default="default", metadata={"help": "default, random, or a mode name"})
    up: BandwidthDist | None = field(default=None, metadata={"help": "class override of the upload distribution"})
    down: BandwidthDist | None = field(default=None, metadata={"help": "class override of the download distribution"})


@dataclass(frozen=True)
class Dynamics:
    power_mode_switch_prob: float = field(default=0.0, metadata={"help": "per round: chance to re-draw the power mode"})
    background_load_prob: float = field(default=0.0, metadata={"help": "per round: chance of background load"})
    background_load: tuple[float, float] = field(default=(0.0, 0.0), metadata={"help": "load range when loaded"})
    free_memory_drop_prob: float = field(default=0.0, metadata={"help": "per round: chance that free memory drops"})
    free_memory_drop: tuple[float, float] = field(default=(0.0, 0.0), metadata={"help": "budget fraction lost"})


@dataclass(frozen=True)
class Scenario:
    name: str = field(metadata={"help": "scenario name"})
    seed: int = field(metadata={"help": "default seed of device draws and dynamics"})
    local_steps: int = field(metadata={"help": "training steps per device per round"})
    budget_mode: str = field(metadata={"help": "absolute (bytes), fraction (of the full-depth footprint) or "
                                               "headroom (0 = head-only footprint, 1 = full-depth footprint)"})
    classes: tuple[ClassSpec, ...] = field(metadata={"help": "device classes and counts"})
    up: BandwidthDist = field(metadata={"help": "upload bandwidth distribution"})
    down: BandwidthDist = field(metadata={"help": "download bandwidth distribution"})
    dynamics: Dynamics = field(default=Dynamics(), metadata={"help": "per-round changes"})
    description: str = field(default="", metadata={"help": "what the scenario models"})
    source: str = field(default="<dict>", compare=False, metadata={"help": "file it came from"})

    @property
    def num_devices(self) -> int:
        return sum(c.count for c in self.classes)


class _Fields:
    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, what: str):
        raise FedquadError(f"scenario {self.source}: field '{path}' {what}")

    def number(self, d: dict, key: str, path: str, default=None, lo=0.0, hi=math.inf) -> float:
        value = d.get(key, default)
        if value is None:
            self.fail(path + key, "is missing")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            self.fail(path + key, f"must be a number in [{lo}, {hi}], got {value!r}")
        return value

    def pair(self, d: dict, key: str, path: str, default=None, lo=0.0, hi=math.inf) -> tuple[float, float]:
        value = d.get(key, default)
        if value is None:
            self.fail(path + key, "is missing (a [low, high] pair)")
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            self.fail(path + key, f"must be a [low, high] pair, got {value!r}")
        for x in value:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not lo <= x <= hi:
                self.fail(path + key, f"must be a pair of numbers in [{lo}, {hi}], got {value!r}")
        a, b = value
        if a > b:
            self.fail(path + key, f"has low {a} > high {b}")
        return float(a), float(b)

    def bandwidth(self, d, path: str) -> BandwidthDist:
        if d is None:
            self.fail(path, "is missing (an object with 'dist' and its parameters)")
        if not isinstance(d, dict):
            self.fail(path, f"must be an object, got {d!r}")
        kind = d.get("dist")
        if kind == "uniform":
            low, high = self.pair({"r": [d.get("low_Mbps"), d.get("high_Mbps")]}, "r", path + ".low_Mbps/high_Mbps")
            if low <= 0:
                self.fail(path + ".low_Mbps", "must be positive")
            return BandwidthDist("uniform", low_Mbps=low, high_Mbps=high)
        if kind == "lognormal":
            median = self.number(d, "median_Mbps", path + ".")
            if median <= 0:
                self.fail(path + ".median_Mbps", "must be positive")
            return BandwidthDist("lognormal", median_Mbps=median, sigma=self.number(d, "sigma", path + ".", hi=5.0))
        if kind == "fixed":
            value = self.number(d, "Mbps", path + ".")
            if value <= 0:
                self.fail(path + ".Mbps", "must be positive")
            return BandwidthDist("fixed", low_Mbps=value)
        if kind is None:
            self.fail(path + ".dist", "is missing (uniform, lognormal or fixed)")
        self.fail(path + ".dist", f"must be uniform, lognormal or fixed, got {kind!r}")


def parse_scenario(data, source: str, catalog: dict[str, DeviceClass]) -> Scenario:
    f = _Fields(source)
    if not isinstance(data, dict):
        raise FedquadError(f"scenario {source}: must be a JSON object")
    mode = data.get("budget_mode")
    if mode is None:
        f.fail("budget_mode", f"is missing (one of {', '.join(BUDGET_MODES)})")
    if mode not in BUDGET_MODES:
        f.fail("budget_mode", f"must be one of {', '.join(BUDGET_MODES)}, got {mode!r}")
    bw = data.get("bandwidth_Mbps")
    if bw is None:
        f.fail("bandwidth_Mbps", "is missing (an object with 'up' and 'down' distributions)")
    if not isinstance(bw, dict):
        f.fail("bandwidth_Mbps", "must be an object with 'up' and 'down' distributions")
    entries = data.get("devices")
    if entries is None:
        f.fail("devices", "is missing (a non-empty list of {class, count, budget})")
    if not isinstance(entries, list) or not entries:
        f.fail("devices", "must be a non-empty list of {class, count, budget}")
    classes = []
    for i, e in enumerate(entries):
        path = f"devices[{i}]."
        if not isinstance(e, dict):
            f.fail(path[:-1], f"must be an object, got {e!r}")
        name = e.get("class")
        if name is None:
            f.fail(path + "class", f"is missing (a device class, one of {', '.join(sorted(catalog))})")
        if name not in catalog:
            raise FedquadError(f"scenario {source}: {path}class: unknown device class {name!r} "
                               f"(known: {', '.join(sorted(catalog))})")
        count = e.get("count")
        if count is None:
            f.fail(path + "count", "is missing (how many devices of this class)")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            f.fail(path + "count", f"must be a positive integer, got {count!r}")
        low, high = f.pair(e, "budget", path)
        power_mode = e.get("power_mode", "default")
        if power_mode not in ("default", "random"):
            catalog[name].power_mode(power_mode)
        cbw = e.get("bandwidth_Mbps", {})
        if not isinstance(cbw, dict):
            f.fail(path + "bandwidth_Mbps", f"must be an object, got {cbw!r}")
        classes.append(ClassSpec(
            name, count, low, high, power_mode,
            up=f.bandwidth(cbw["up"], path + "bandwidth_Mbps.up") if "up" in cbw else None,
            down=f.bandwidth(cbw["down"], path + "bandwidth_Mbps.down") if "down" in cbw else None))
    dyn = data.get("dynamics", {})
    if not isinstance(dyn, dict):
        f.fail("dynamics", f"must be an object, got {dyn!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        f.fail("seed", f"must be an integer, got {seed!r}")
    steps = data.get("local_steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        f.fail("local_steps", f"must be a positive integer, got {steps!r}")
    return Scenario(
        name=str(data.get("name", os.path.basename(source)[:-5])), seed=seed, local_steps=steps, budget_mode=mode,
        classes=tuple(classes), up=f.bandwidth(bw.get("up"), "bandwidth_Mbps.up"),
        down=f.bandwidth(bw.get("down"), "bandwidth_Mbps.down"),
        dynamics=Dynamics(
            power_mode_switch_prob=f.number(dyn, "power_mode_switch_prob", "dynamics.", 0.0, hi=1.0),
            background_load_prob=f.number(dyn, "background_load_prob", "dynamics.", 0.0, hi=1.0),
            background_load=f.pair(dyn, "background_load", "dynamics.", (0.0, 0.0), hi=0.95),
            free_memory_drop_prob=f.number(dyn, "free_memory_drop_prob", "dynamics.", 0.0, hi=1.0),
            free_memory_drop=f.pair(dyn, "free_memory_drop", "dynamics.", (0.0, 0.0), hi=0.95)),
        description=str(data.get("description", "")), source=source)


def list_scenarios() -> list[str]:
    folder = resources.files("fedquad").joinpath(SCENARIO_DIR)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_scenario(name_or_path: str, catalog: dict[str, DeviceClass] | None = None) -> Scenario:
    """A shipped scenario by name (see list_scenarios) or a scenario JSON file by path."""
    if os.path.isfile(name_or_path):
        source = name_or_path
        try:
            with open(name_or_path) as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError) as exc:
            raise FedquadError(f"cannot read scenario {name_or_path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise FedquadError(f"scenario {name_or_path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    elif os.path.isdir(name_or_path):
        raise FedquadError(f"scenario {name_or_path} is a directory, not a scenario JSON file")
    elif name_or_path in list_scenarios():
        source = f"{SCENARIO_DIR}/{name_or_path}.json"
        data = json.loads(resources.files("fedquad").joinpath(source).read_text())
    else:
        raise FedquadError(f"unknown scenario {name_or_path!r}: not a file, and not a shipped scenario "
                           f"({', '.join(list_scenarios())})")
    return parse_scenario(data, source, load_catalog() if catalog is None else catalog)
