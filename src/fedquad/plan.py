"""ClientPlan: which blocks a device trains, which keep int8/int4 saved activations, which recompute.

Pure Python (no torch): the planner and cost model use it too.

Blocks are indexed 0..L-1 from the input side. A plan with depth d trains the LoRA of blocks
L-d..L-1 (plus the task head). With placement "bottom" (default) the q quantized blocks are the
q trainable blocks nearest the input, L-d..L-d+q-1: an error in a block's saved activations
perturbs that block's gradients and everything below it, and the lowest trainable blocks have
nothing trainable below. "top" puts them at L-q..L-1, for the ablation.

The r recomputed blocks (`recompute_layers`) are placed the same way: with "bottom" they are
L-d..L-d+r-1. A recomputed block runs under non-reentrant activation checkpointing
(torch.utils.checkpoint, use_reentrant=False): it stores only its input for backward and
recomputes its forward there (exact gradients, one extra forward of the block). Recomputed and
quantized blocks may overlap: a block that is both stores its checkpoint input quantized at `bits`
(the recompute then starts from that input, so its gradients are no longer exact). So with
"bottom", q=2 and r=4 the two lowest trainable blocks store a quantized input, the next two their
full-precision input, and the rest save their activations as usual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fedquad.errors import FedquadError

SUPPORTED_BITS = (8, 4)
PLACEMENTS = ("bottom", "top")
# Elements per min/max quantization group, the one default of every entry point (library, CLI,
# simulator, Flower, cost model). 64 rather than 128: at full int4 on MiniLM 16 x 64 the worst
# gradient cosine is 0.967 vs 0.930 (kept/raw 0.157 vs 0.149), at int8 0.99975 vs 0.99953
# (docs/quantization.md, section 1). A profile records the group size it was measured at.
DEFAULT_GROUP_SIZE = 64


@dataclass(frozen=True, order=True)
class ClientPlan:
    depth: int = field(metadata={"help": "number of trainable blocks counted from the output (0 = head only)"})
    quant_layers: int = field(default=0, metadata={"help": "trainable blocks whose saved activations are quantized"})
    bits: int = field(default=8, metadata={"help": "bit width of quantized saved activations: 8 or 4"})
    placement: str = field(default="bottom", metadata={
        "help": "which trainable blocks are quantized and recomputed: bottom or top"})
    recompute_layers: int = field(default=0, metadata={
        "help": "trainable blocks checkpointed (store their input, recompute in backward); a block also "
                "counted in quant_layers stores that input quantized"})

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 0:
            raise FedquadError(f"depth must be a non-negative integer, got {self.depth!r}")
        if not isinstance(self.quant_layers, int) or self.quant_layers < 0:
            raise FedquadError(f"quant_layers must be a non-negative integer, got {self.quant_layers!r}")
        if self.quant_layers > self.depth:
            raise FedquadError(f"quant_layers ({self.quant_layers}) cannot exceed depth ({self.depth})")
        if not isinstance(self.recompute_layers, int) or self.recompute_layers < 0:
            raise FedquadError(f"recompute_layers must be a non-negative integer, got {self.recompute_layers!r}")
        if self.recompute_layers > self.depth:
            raise FedquadError(f"recompute_layers ({self.recompute_layers}) cannot exceed depth ({self.depth})")
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
        return self._placed(num_blocks, self.quant_layers)

    def recomputed_blocks(self, num_blocks: int) -> range:
        """Blocks run under activation checkpointing (placed like the quantized ones)."""
        return self._placed(num_blocks, self.recompute_layers)

    def _placed(self, num_blocks: int, count: int) -> range:
        self.validate_for(num_blocks)
        if self.placement == "bottom":
            first = num_blocks - self.depth
            return range(first, first + count)
        return range(num_blocks - count, num_blocks)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClientPlan":
        try:
            return cls(**{k: data[k] for k in ("depth", "quant_layers", "bits", "placement", "recompute_layers")
                          if k in data})
        except TypeError as exc:  # missing depth
            raise FedquadError(f"malformed plan {data!r}: {exc}") from None

    def describe(self) -> str:
        text = f"d={self.depth}"
        if self.quant_layers:
            text += f" q={self.quant_layers}@int{self.bits}"
        if self.recompute_layers:
            text += f" r={self.recompute_layers}"
        return text


# What a baseline changes in the client beyond the plan (docs/design.md, "Strategies"). FedQuad itself needs
# only the plan. FedRA trains a random subset of blocks as a sub-model: the other blocks are
# bypassed (their output is their input), so they cost neither activation memory nor backward
# compute. HetLoRA trains only the first `rank` LoRA components of every adapter (rows of A,
# columns of B); the rest are zeroed locally and their gradients masked.

@dataclass(frozen=True)
class TrainOptions:
    lora_blocks: tuple[int, ...] | None = field(default=None, metadata={
        "help": "train LoRA only in these blocks and bypass every other block (FedRA); None = the plan decides"})
    rank: int | None = field(default=None, metadata={
        "help": "train only the first `rank` LoRA components (HetLoRA); None = the full rank"})

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise FedquadError(f"rank must be >= 1, got {self.rank}")
        if self.lora_blocks is not None and len(set(self.lora_blocks)) != len(self.lora_blocks):
            raise FedquadError(f"lora_blocks has duplicates: {self.lora_blocks}")

    def skip_blocks(self, num_blocks: int) -> frozenset[int]:
        if self.lora_blocks is None:
            return frozenset()
        if any(not 0 <= b < num_blocks for b in self.lora_blocks):
            raise FedquadError(f"lora_blocks {self.lora_blocks} outside 0..{num_blocks - 1}")
        return frozenset(range(num_blocks)) - set(self.lora_blocks)

    def to_dict(self) -> dict:
        return {"lora_blocks": None if self.lora_blocks is None else list(self.lora_blocks), "rank": self.rank}

    @classmethod
    def from_dict(cls, data: dict | None) -> "TrainOptions":
        data = data or {}
        blocks = data.get("lora_blocks")
        return cls(None if blocks is None else tuple(int(b) for b in blocks), data.get("rank"))


def plan_depth_for_blocks(lora_blocks: tuple[int, ...], num_blocks: int) -> int:
    """The ClientPlan depth that makes gradients reach the lowest block of a FedRA subset."""
    return num_blocks - min(lora_blocks) if lora_blocks else 0
