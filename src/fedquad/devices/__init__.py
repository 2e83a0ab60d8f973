"""Simulated heterogeneous devices: catalog of device classes, scenarios, per-round dynamics.

Pure Python over plain data (no torch): the planner and the simulator's clock use it.
`device` is the Device record everyone reads, `catalog` the device classes, `scenario` the
scenario types and file format, `sampling` the seeded draw of devices and their rounds.
"""

from fedquad.devices.catalog import DeviceClass, PowerMode, device_class, load_catalog, parse_catalog
from fedquad.devices.device import Device, planning_length
from fedquad.devices.sampling import budget_bytes_for, devices_at_round, draw_devices
from fedquad.devices.scenario import (BUDGET_MODES, BandwidthDist, ClassSpec, Dynamics, Scenario, list_scenarios,
                                      load_scenario, parse_scenario)

__all__ = ["BUDGET_MODES", "BandwidthDist", "ClassSpec", "Device", "DeviceClass", "Dynamics", "PowerMode", "Scenario",
           "budget_bytes_for", "device_class", "devices_at_round", "draw_devices", "list_scenarios", "load_catalog",
           "load_scenario", "parse_catalog", "parse_scenario", "planning_length"]
