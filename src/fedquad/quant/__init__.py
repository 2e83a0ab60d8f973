"""Activation quantization: per-group asymmetric int8/int4 codes for saved activations.

``reference`` is the readable spec; ``fast`` gives identical results with fewer memory passes
(native C kernels on CPU, Triton on CUDA, torch.compile/eager fallbacks). Callers pick one by
name through ``get_quantizer`` so the CLI's ``--quantizer`` flag and the tests can swap
implementations without touching the hooks; ``warm_up`` builds a setting's kernels ahead of
any timed step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedquad.errors import FedquadError
from fedquad.quant.reference import QuantizedTensor, packed_nbytes

__all__ = ["QuantizedTensor", "Quantizer", "get_quantizer", "packed_nbytes", "warm_up", "QUANTIZER_KINDS"]

QUANTIZER_KINDS = ("auto", "fast", "reference")


@dataclass(frozen=True)
class Quantizer:
    """A named pair of functions with the ``reference`` signatures."""

    name: str
    quantize: Callable[..., QuantizedTensor]
    dequantize: Callable[[QuantizedTensor], torch.Tensor]
    quantize_saved: Callable[..., tuple[QuantizedTensor, torch.Tensor]]  # the pack hook's entry point


def get_quantizer(kind: str = "auto") -> Quantizer:
    """"reference", "fast", or "auto" (= fast: it falls back internally when compiling fails)."""
    if kind not in QUANTIZER_KINDS:
        raise FedquadError(f"unknown quantizer {kind!r}; choose one of {', '.join(QUANTIZER_KINDS)}")
    if kind == "reference":
        from fedquad.quant import reference as impl
    else:
        from fedquad.quant import fast as impl
    return Quantizer("reference" if kind == "reference" else "fast", impl.quantize, impl.dequantize,
                     impl.quantize_saved)


def warm_up(kind: str, bits: int, group_size: int, stochastic: bool = False,
            device: torch.device | str = "cpu") -> float:
    """Build/compile the kernels quantizer ``kind`` needs for these settings; seconds taken.

    Anything that times training steps calls this first, so that one-off compilation (the native
    kernels' first build, torch.compile, Triton's JIT) is reported on its own instead of landing
    inside a measured step."""
    if get_quantizer(kind).name == "reference":
        return 0.0
    from fedquad.quant import fast
    return fast.warm_up(bits, group_size, stochastic, device)
