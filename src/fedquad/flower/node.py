"""What a SuperNode tells the server about itself, and how the server turns that into a Device.

A device sets these `node_config` keys (`flower-supernode --node-config 'k=v k2="text"'`):

| key | meaning |
|---|---|
| `data-path` | this node's own training data: a file (.csv/.tsv/.jsonl/.json/.parquet) or a data folder, read with the run's column settings (`fedquad.flower.localdata`) |
| `eval-path` | a local evaluation file for federated evaluation (optional) |
| `eval-fraction` | hold out this seeded share of `data-path` for local evaluation instead (optional) |
| `worker-socket` | the Unix socket of this node's long-lived worker (`python -m fedquad.flower.worker --socket PATH`): the ClientApp relays to it, and the model stays loaded between rounds |
| `cache-dir` | where the node caches its tokenised data (default $FEDQUAD_NODE_CACHE or ~/.cache/fedquad/node) |
| `partition-id`, `num-partitions` | demo mode instead of `data-path`: which shard of the run's training data this node trains on |
| `memory-budget-mb` | memory the node may use for training, MiB (2**20 bytes) |
| `memory-budget-fraction` | the same as a fraction of the run model's full-depth footprint (cost model) |
| `device-class` | a catalog class (`jetson-tx2`, `orin-nano`, ...): sets the speed from its spec figures |
| `power-mode` | a power mode of that class (default: the class default) |
| `speed` | throughput relative to the machine the cost-model profile was measured on (overrides the class) |
| `up-mbps`, `down-mbps` | link bandwidth in Mbit/s for the round-time model (default 100) |
| `device-id` | a stable name for the planner's memory (default: `<device-class or node>-p<partition-id>`, with data-path `<...>-n<node id>`) |
| `fault`, `fault-round` | test hook: return a malformed update (`nan`, `wrong-key`, `wrong-shape`), in every round or only round `fault-round` |

Without a budget the node reports the memory available now (psutil); without `speed` and
`device-class` it measures its fp32 matmul throughput (a short calibration), and the server
divides by the profile machine's. Pure Python here except the calibration (torch, lazily).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any, Mapping

from fedquad.errors import FedquadError

MiB = 2 ** 20
DEFAULT_LINK_MBPS = 100.0
FAULTS = ("nan", "wrong-key", "wrong-shape")
NODE_KEYS = ("data-path", "eval-path", "eval-fraction", "cache-dir", "worker-socket", "partition-id", "num-partitions",
             "memory-budget-mb", "memory-budget-fraction", "device-class",
             "power-mode", "speed", "up-mbps", "down-mbps", "device-id", "fault", "fault-round")


def _number(config: Mapping[str, Any], key: str, *, positive: bool = True) -> float | None:
    value = config.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FedquadError(f"node_config {key}={value!r} is not a number") from None
    if positive and not number > 0:
        raise FedquadError(f"node_config {key} must be > 0, got {value!r}")
    return number


def _integer(config: Mapping[str, Any], key: str) -> int | None:
    number = _number(config, key, positive=False)
    if number is None:
        return None
    if number != int(number) or number < 0:
        raise FedquadError(f"node_config {key} must be a non-negative integer, got {config.get(key)!r}")
    return int(number)


def _text(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    return None if value is None or str(value).strip() == "" else str(value).strip()


def node_settings(node_config: Mapping[str, Any]) -> dict:
    """The fedquad keys of a node_config, checked and typed (None where not set)."""
    out = {
        "data-path": _text(node_config, "data-path"),
        "eval-path": _text(node_config, "eval-path"),
        "eval-fraction": _number(node_config, "eval-fraction"),
        "cache-dir": _text(node_config, "cache-dir"),
        "worker-socket": _text(node_config, "worker-socket"),
        "partition-id": _integer(node_config, "partition-id"),
        "num-partitions": _integer(node_config, "num-partitions"),
        "memory-budget-mb": _number(node_config, "memory-budget-mb"),
        "memory-budget-fraction": _number(node_config, "memory-budget-fraction"),
        "device-class": _text(node_config, "device-class"),
        "power-mode": _text(node_config, "power-mode"),
        "speed": _number(node_config, "speed"),
        "up-mbps": _number(node_config, "up-mbps"),
        "down-mbps": _number(node_config, "down-mbps"),
        "device-id": _text(node_config, "device-id"),
        "fault": _text(node_config, "fault"),
        "fault-round": _integer(node_config, "fault-round"),
    }
    if out["num-partitions"] is not None and out["num-partitions"] < 1:
        raise FedquadError("node_config num-partitions must be >= 1")
    if (out["partition-id"] is None) != (out["num-partitions"] is None):
        raise FedquadError("node_config needs both partition-id and num-partitions")
    if out["partition-id"] is not None and out["partition-id"] >= out["num-partitions"]:
        raise FedquadError(f"node_config partition-id {out['partition-id']} is outside 0..{out['num-partitions'] - 1}")
    if out["data-path"] is not None and out["partition-id"] is not None:
        raise FedquadError("node_config sets data-path and partition-id: a node trains on its own data (data-path) "
                           "or on a shard of the run's data (partition-id, the demo mode), not both")
    if out["eval-fraction"] is not None and not out["eval-fraction"] < 1:
        raise FedquadError(f"node_config eval-fraction must be between 0 and 1, got {out['eval-fraction']!r}")
    if out["eval-path"] is not None and out["eval-fraction"] is not None:
        raise FedquadError("node_config sets eval-path and eval-fraction: choose one local evaluation split")
    if (out["eval-path"] is not None or out["eval-fraction"] is not None) and out["data-path"] is None:
        raise FedquadError("node_config eval-path / eval-fraction need data-path (the node's own data)")
    if out["fault"] is not None and out["fault"] not in FAULTS:
        raise FedquadError(f"node_config fault must be one of {', '.join(FAULTS)}, got {out['fault']!r}")
    if out["device-class"] is not None:
        from fedquad.devices import device_class
        cls = device_class(out["device-class"])
        if out["power-mode"] is not None:
            cls.power_mode(out["power-mode"])
    return out


def available_memory_bytes() -> float:
    import psutil
    return float(psutil.virtual_memory().available)


def describe_node(node_config: Mapping[str, Any], calibrate: bool = True) -> dict:
    """The node's answer to the server's profile query (JSON-able)."""
    s = node_settings(node_config)
    report = {**s, "available-bytes": available_memory_bytes(), "hostname": socket.gethostname(), "pid": os.getpid(),
              "measured-gflops": None}
    if calibrate and s["speed"] is None and s["device-class"] is None:
        import torch

        from fedquad.diagnostics.profile import machine_gflops
        report["measured-gflops"] = float(machine_gflops(torch.device("cpu"), size=512, repeats=5))
    return report


def budget_bytes(settings: Mapping[str, Any], full_footprint_bytes: float | None, available: float) -> tuple[float, str]:
    """(budget, where it came from): memory-budget-mb, else the fraction, else what is available."""
    if settings.get("memory-budget-mb") is not None:
        return float(settings["memory-budget-mb"]) * MiB, "memory-budget-mb"
    if settings.get("memory-budget-fraction") is not None:
        if full_footprint_bytes is None:
            raise FedquadError("memory-budget-fraction needs the model's footprint from the server")
        return float(settings["memory-budget-fraction"]) * full_footprint_bytes, "memory-budget-fraction"
    return float(available), "measured (available memory)"


def device_from_report(report: Mapping[str, Any], *, node_id: int, profile, local_steps: int,
                       data_weight: float) -> tuple[object, dict]:
    """(Device, how each figure was obtained) for a node's profile report, under `profile`."""
    from fedquad.costmodel import cost_model
    from fedquad.devices import Device, device_class, planning_length

    footprint = cost_model(profile).full_footprint_bytes()
    budget, budget_source = budget_bytes(report, footprint, float(report.get("available-bytes") or 0.0))
    cls_name = report.get("device-class")
    power_mode = ""
    if report.get("speed") is not None:
        speed, speed_source = float(report["speed"]), "speed"
    elif cls_name:
        cls = device_class(cls_name)
        mode = cls.power_mode(report.get("power-mode") or cls.default_power_mode)
        power_mode = mode.name
        speed = cls.sustained_gflops / profile.machine_gflops * mode.speed_factor
        speed_source = f"device-class {cls_name} ({mode.name})"
    elif report.get("measured-gflops"):
        speed = float(report["measured-gflops"]) / profile.machine_gflops
        speed_source = "measured (matmul calibration)"
    else:
        speed, speed_source = 1.0, "default (1.0)"
    up = (report.get("up-mbps") or DEFAULT_LINK_MBPS) * 1e6 / 8
    down = (report.get("down-mbps") or DEFAULT_LINK_MBPS) * 1e6 / 8
    device_id = report.get("device-id") or (
        f"{cls_name or 'node'}-p{report['partition-id']}" if report.get("partition-id") is not None
        else f"{cls_name or 'node'}-n{node_id}")
    device = Device(device_id=device_id, device_class=cls_name or "unknown", budget_bytes=int(budget), speed=speed,
                    up_Bps=up, down_Bps=down, local_steps=local_steps, data_weight=float(data_weight),
                    power_mode=power_mode, base_budget_bytes=int(budget), base_speed=speed,
                    initial_power_mode=power_mode,
                    # a node with its own data reports its longest example: planned at that length
                    seq_len_tokens=(planning_length(int(report["length_max_tokens"]))
                                    if report.get("length_max_tokens") else None))
    return device, {"budget": budget_source, "speed": speed_source}


def with_budget(device, budget: float):
    """The device with a newly reported budget (a reply tells the server what the node has now)."""
    return dataclasses.replace(device, budget_bytes=int(budget), base_budget_bytes=int(budget))
