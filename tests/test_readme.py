"""Every ```python block of README.md runs as written, each in a fresh interpreter and an empty
current directory (what a new user who pastes it gets), and the example configs it names exist
and load."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _readme() -> str:
    with open(README) as f:
        return f.read()


BLOCKS = python_blocks(_readme())


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.integration  # MiniLM loads and trains: tens of seconds each on 2 cores
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs_as_written(index, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FEDQUAD_DATA_ROOT"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n--- stderr ---\n{proc.stderr[-3000:]}"


def test_every_example_config_the_readme_names_exists_and_loads():
    from fedquad.sim.config import load_config
    named = sorted(set(re.findall(r"examples/[\w.-]+\.toml", _readme())))
    assert named, "the README names no example config"
    for rel in named:
        path = os.path.join(REPO, rel)
        assert os.path.isfile(path), f"README names {rel}, which does not exist"
        load_config(path)
    for name in os.listdir(os.path.join(REPO, "examples")):  # and every shipped one loads too
        if name.endswith(".toml"):
            load_config(os.path.join(REPO, "examples", name))


def test_the_readme_scenario_example_is_a_valid_scenario(tmp_path):
    from fedquad.costmodel import load_profile
    from fedquad.devices import draw_devices, load_scenario
    blocks = [b for b in re.findall(r"^```json\n(.*?)^```", _readme(), flags=re.S | re.M) if "budget_mode" in b]
    assert blocks, "the README shows no scenario JSON"
    for i, text in enumerate(blocks):
        path = tmp_path / f"scenario{i}.json"
        path.write_text(text)
        scenario = load_scenario(str(path))
        assert len(draw_devices(scenario, load_profile("minilm-b16-s64"))) == scenario.num_devices
