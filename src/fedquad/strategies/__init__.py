"""Federated strategies (docs/design.md, "Strategies"): FedQuad and the baselines, one small module each, on
the shared protocol of `fedquad.strategies.base`. `get_strategy(name)` builds one by name."""

from __future__ import annotations

from fedquad.errors import FedquadError
from fedquad.strategies.base import Assignment, ClientOutcome, RoundContext, Strategy, deepest_fitting_depth
from fedquad.strategies.depth_only import DepthOnly
from fedquad.strategies.fedlora import FedLoRA
from fedquad.strategies.fedlora_ckpt import FedLoRACkpt
from fedquad.strategies.fedlora_uniform import FedLoRAUniform
from fedquad.strategies.fedquad import FedQuad
from fedquad.strategies.fedquad_no_recompute import FedQuadNoRecompute
from fedquad.strategies.fedquad_paper import FedQuadPaper
from fedquad.strategies.fedra import FedRA
from fedquad.strategies.hetlora import HetLoRA
from fedquad.strategies.quant_only import QuantOnly

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    FedQuad, FedQuadPaper, FedLoRA, FedLoRAUniform, HetLoRA, FedRA, DepthOnly, QuantOnly, FedLoRACkpt,
    FedQuadNoRecompute)}


def get_strategy(name: str, **params) -> Strategy:
    """A strategy by its name (`fedquad`, `fedlora`, ...); `params` go to its constructor."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise FedquadError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return cls(**params)


def parse_strategy_list(text: str) -> list[str]:
    """'fedquad,fedlora' -> ['fedquad', 'fedlora'], checked; 'all' -> every strategy."""
    names = list(STRATEGIES) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise FedquadError(f"unknown strategy {', '.join(unknown) or '(none given)'}; choose from "
                           f"{', '.join(STRATEGIES)} or 'all'")
    if len(set(names)) != len(names):
        raise FedquadError(f"strategy listed twice in {text!r}")
    return names


__all__ = ["Assignment", "ClientOutcome", "DepthOnly", "FedLoRA", "FedLoRACkpt", "FedLoRAUniform", "FedQuad",
           "FedQuadNoRecompute", "FedQuadPaper", "FedRA", "HetLoRA",
           "QuantOnly", "RoundContext", "STRATEGIES", "Strategy", "deepest_fitting_depth", "get_strategy",
           "parse_strategy_list"]
