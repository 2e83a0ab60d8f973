"""Activation quantization: per-group asymmetric int8/int4 codes for saved activations.

``reference`` is the readable spec; ``fast`` gives identical results with fewer memory passes
(compiled on CPU when possible). Callers pick one by name through ``get_quantizer`` so the CLI's
``--quantizer`` flag and the tests can swap implementations without touching the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedquad.errors import FedquadError
from fedquad.quant.reference import QuantizedTensor, packed_nbytes

__all__ = ["QuantizedTensor", "Quantizer", "get_quantizer", "packed_nbytes", "QUANTIZER_KINDS"]

QUANTIZER_KINDS = ("auto", "fast", "reference")


@dataclass(frozen=True)
class Quantizer:
    """A named pair of functions with the ``reference`` signatures."""

    name: str
    quantize: Callable[..., QuantizedTensor]
    dequantize: Callable[[QuantizedTensor], torch.Tensor]


def get_quantizer(kind: str = "auto") -> Quantizer:
    """"reference", "fast", or "auto" (= fast: it falls back internally when compiling fails)."""
    if kind not in QUANTIZER_KINDS:
        raise FedquadError(f"unknown quantizer {kind!r}; choose one of {', '.join(QUANTIZER_KINDS)}")
    if kind == "reference":
        from fedquad.quant import reference as impl
    else:
        from fedquad.quant import fast as impl
    return Quantizer("reference" if kind == "reference" else "fast", impl.quantize, impl.dequantize)
