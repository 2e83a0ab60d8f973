"""Device classes (docs/design.md, "Simulated devices"): public spec figures plus documented calibration.

The shipped catalog is resources/devices/catalog.json; its "notes" explain every number that is
an estimate rather than a spec figure. Pure Python: no torch.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources

from fedquad.errors import FedquadError

CATALOG_RESOURCE = "resources/devices/catalog.json"


@dataclass(frozen=True)
class PowerMode:
    name: str = field(metadata={"help": "nvpmodel-style mode name"})
    watts: float = field(metadata={"help": "nominal power budget of the mode"})
    speed_factor: float = field(metadata={"help": "speed relative to the class's fastest mode (0, 1]"})


@dataclass(frozen=True)
class DeviceClass:
    name: str = field(metadata={"help": "catalog key, e.g. jetson-tx2"})
    display_name: str = field(metadata={"help": "human-readable name"})
    memory_bytes: int = field(metadata={"help": "physical memory of the board"})
    peak_tflops: float = field(metadata={"help": "listed peak throughput (see peak_precision)"})
    peak_precision: str = field(metadata={"help": "precision the peak is quoted at: fp16 or fp32"})
    memory_bandwidth_GBps: float = field(metadata={"help": "DRAM bandwidth (informational)"})
    efficiency: float = field(metadata={"help": "calibration: sustained fp32 matmul / listed peak"})
    power_modes: tuple[PowerMode, ...] = field(metadata={"help": "available power modes"})
    default_power_mode: str = field(metadata={"help": "mode a device starts in unless the scenario says otherwise"})
    source: str = field(default="", metadata={"help": "where the figures come from; says ESTIMATE where they are"})

    @property
    def sustained_gflops(self) -> float:
        """Sustained fp32 GFLOP/s in the fastest power mode, before background load."""
        return self.peak_tflops * 1000.0 * self.efficiency

    def power_mode(self, name: str) -> PowerMode:
        for mode in self.power_modes:
            if mode.name == name:
                return mode
        known = ", ".join(m.name for m in self.power_modes)
        raise FedquadError(f"device class {self.name} has no power mode {name!r} (known: {known})")


def _parse_class(name: str, d: dict, source: str) -> DeviceClass:
    where = f"device catalog {source}: class {name!r}"
    try:
        modes = tuple(PowerMode(str(m["name"]), float(m["watts"]), float(m["speed_factor"]))
                      for m in d["power_modes"])
        cls = DeviceClass(
            name=name, display_name=str(d.get("display_name", name)), memory_bytes=int(d["memory_bytes"]),
            peak_tflops=float(d["peak_tflops"]), peak_precision=str(d.get("peak_precision", "fp32")),
            memory_bandwidth_GBps=float(d.get("memory_bandwidth_GBps", 0.0)), efficiency=float(d["efficiency"]),
            power_modes=modes, default_power_mode=str(d["default_power_mode"]), source=str(d.get("source", "")))
    except KeyError as exc:
        raise FedquadError(f"{where}: field {exc.args[0]!r} is missing") from None
    except (TypeError, ValueError) as exc:
        raise FedquadError(f"{where}: malformed ({exc})") from None
    if cls.peak_tflops <= 0 or not 0 < cls.efficiency <= 1 or cls.memory_bytes <= 0:
        raise FedquadError(f"{where}: peak_tflops and memory_bytes must be positive, efficiency in (0, 1]")
    if not modes or any(not 0 < m.speed_factor <= 1 for m in modes):
        raise FedquadError(f"{where}: needs power modes with speed_factor in (0, 1]")
    cls.power_mode(cls.default_power_mode)  # must name one of its modes
    return cls


def parse_catalog(data: dict, source: str = "<dict>") -> dict[str, DeviceClass]:
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        raise FedquadError(f"device catalog {source}: expected an object with a 'classes' object")
    return {name: _parse_class(name, d, source) for name, d in data["classes"].items()}


@functools.lru_cache(maxsize=None)
def _shipped_catalog() -> dict[str, DeviceClass]:
    text = resources.files("fedquad").joinpath(CATALOG_RESOURCE).read_text()
    return parse_catalog(json.loads(text), source=CATALOG_RESOURCE)


def load_catalog(path: str | None = None) -> dict[str, DeviceClass]:
    """The shipped catalog, or one read from `path` (same format)."""
    if path is None:
        return dict(_shipped_catalog())
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise FedquadError(f"cannot read device catalog {path}: {exc}") from None
    return parse_catalog(data, source=path)


def device_class(name: str, catalog: dict[str, DeviceClass] | None = None) -> DeviceClass:
    catalog = _shipped_catalog() if catalog is None else catalog
    if name not in catalog:
        raise FedquadError(f"unknown device class {name!r} (known: {', '.join(sorted(catalog))})")
    return catalog[name]
