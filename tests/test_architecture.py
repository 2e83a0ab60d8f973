"""DESIGN section 10, checked: dependency direction between the layers."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["fedquad.plan", "fedquad.costmodel", "fedquad.planner", "fedquad.devices",
                                    "fedquad.strategies"])
def test_planning_layers_do_not_import_torch(module):
    assert "torch" not in imported_after(module)


@pytest.mark.parametrize("module", ["fedquad.sim", "fedquad.sim.compare", "fedquad.client", "fedquad.aggregation",
                                    "fedquad.strategies", "fedquad.evaluation"])
def test_core_does_not_import_flower_or_cli(module):
    found = imported_after(module)
    assert "flwr" not in found
    out = subprocess.run([sys.executable, "-c", f"import sys, {module}; print('fedquad.cli' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
