"""Shared fixtures. Models are cached per session: loading MiniLM takes seconds."""

from __future__ import annotations

import functools
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Property tests draw the same examples in every run (CI included), so a red run is reproducible
# and never a draw of luck; `HYPOTHESIS_PROFILE=explore` searches with fresh random examples.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("reproducible", derandomize=True, database=None)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same torch RNG state: a bound checked on random inputs is checked
    on the same inputs in every run and in any test order, never on luck."""
    import torch
    torch.manual_seed(0)


@functools.lru_cache(maxsize=None)
def cached_model(name: str, task: str = "seq-cls"):
    from fedquad.diagnostics.memory import perturb_adapters
    from fedquad.models import load_model
    adapted = load_model(name, task=task, with_tokenizer=False)
    perturb_adapters(adapted)
    return adapted


@pytest.fixture
def tiny_llama():
    return cached_model("tiny-llama", "causal-lm")


@pytest.fixture
def minilm():
    return cached_model("minilm")


def quick_profile(folder, model: str, batch_size: int, seq_len: int) -> str:
    """A cost-model profile measured with one repeat: the clock only needs plausible times here."""
    from fedquad.cli.main import main
    path = str(folder / "profile.json")
    assert main(["profile", "--model", model, "--batch-size", str(batch_size), "--seq-len", str(seq_len),
                 "--repeats", "1", "--warmup", "1", "--out", path]) == 0
    return path
