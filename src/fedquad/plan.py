"""ClientPlan: which blocks a device trains and which keep int8/int4 saved activations.

Pure Python (no torch): the planner and cost model use it too.

Blocks are indexed 0..L-1 from the input side. A plan with depth d trains the LoRA of blocks
L-d..L-1 (plus the task head). With placement "bottom" (default) the q quantized blocks are the
q trainable blocks nearest the input, L-d..L-d+q-1: an error in a block's saved activations
perturbs that block's gradients and everything below it, and the lowest trainable blocks have
nothing trainable below. "top" puts them at L-q..L-1, for the ablation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fedquad.errors import FedquadError

SUPPORTED_BITS = (8, 4)
PLACEMENTS = ("bottom", "top")


@dataclass(frozen=True, order=True)
class ClientPlan:
    depth: int = field(metadata={"help": "number of trainable blocks counted from the output (0 = head only)"})
    quant_layers: int = field(default=0, metadata={"help": "trainable blocks whose saved activations are quantized"})
    bits: int = field(default=8, metadata={"help": "bit width of quantized saved activations: 8 or 4"})
    placement: str = field(default="bottom", metadata={"help": "which trainable blocks are quantized: bottom or top"})

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 0:
            raise FedquadError(f"depth must be a non-negative integer, got {self.depth!r}")
        if not isinstance(self.quant_layers, int) or self.quant_layers < 0:
            raise FedquadError(f"quant_layers must be a non-negative integer, got {self.quant_layers!r}")
        if self.quant_layers > self.depth:
            raise FedquadError(f"quant_layers ({self.quant_layers}) cannot exceed depth ({self.depth})")
        if self.bits not in SUPPORTED_BITS:
            raise FedquadError(f"bits must be 4 or 8, got {self.bits!r}")
        if self.placement not in PLACEMENTS:
            raise FedquadError(f"placement must be 'bottom' or 'top', got {self.placement!r}")

    def validate_for(self, num_blocks: int) -> "ClientPlan":
        """Check the plan against a model with `num_blocks` blocks; returns self."""
        if self.depth > num_blocks:
            raise FedquadError(f"depth {self.depth} is outside 0..{num_blocks} for a model with {num_blocks} blocks")
        return self

    def trainable_blocks(self, num_blocks: int) -> range:
        self.validate_for(num_blocks)
        return range(num_blocks - self.depth, num_blocks)

    def quantized_blocks(self, num_blocks: int) -> range:
        self.validate_for(num_blocks)
        if self.placement == "bottom":
            first = num_blocks - self.depth
            return range(first, first + self.quant_layers)
        return range(num_blocks - self.quant_layers, num_blocks)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClientPlan":
        try:
            return cls(**{k: data[k] for k in ("depth", "quant_layers", "bits", "placement") if k in data})
        except TypeError as exc:  # missing depth
            raise FedquadError(f"malformed plan {data!r}: {exc}") from None

    def describe(self) -> str:
        if self.quant_layers == 0:
            return f"d={self.depth}"
        return f"d={self.depth} q={self.quant_layers}@int{self.bits}"
