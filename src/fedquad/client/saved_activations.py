"""Saved-activation hooks: exact per-block accounting and optional int8/int4 storage.

A `SavedTensorPolicy` is installed with `torch.autograd.graph.saved_tensors_hooks` around one
block's forward. Its pack hook sees every tensor autograd saves for backward and decides:

* parameters and views of them (matched on storage, not isinstance: autograd often saves a
  transposed view of a frozen weight) -> kept by reference, counted nowhere (they are weights);
* non-float, tiny, non-finite or huge tensors (attention masks filled with the dtype minimum)
  -> kept as they are, counted raw == kept;
* LoRA bottleneck activations (last dimension == the LoRA rank) -> kept: they are r/h of a
  block's activations yet feed LoRA B's gradient directly, so quantizing them buys little memory
  for a large gradient error;
* everything else -> quantized eagerly (when the block is quantized) or kept (when not).
  Non-negative tensors (softmax probabilities, dropout masks, ReLU outputs) are quantized as
  sqrt(x) (correctly rounded) and squared back: attention rows are peaky, and a linear grid's absolute error on the
  many near-zero probabilities dominates the query/key gradients. The square-root grid keeps the
  error proportional to sqrt(p). Measured on MiniLM int8 at full quantization this lifts the worst
  LoRA-gradient cosine from 0.991 to 0.99975 (worst of three batches, docs/quantization.md).

One pass per tensor, no host synchronisation. The pack hook makes a single quantizer call,
``quantize_saved`` (contract in ``fedquad/quant/reference.py``): the non-finite/huge check and the
square-root-grid decision come out of the kernel's own per-group min/max, the grid travels in the
sign bit of the scales, and dequantize squares those groups back in the same pass. Nothing in pack
or unpack reads device data on the host (no ``.item()``/``float()``). Only the keep-raw flag must
reach the host, to know which copy to keep and what to count:

* CPU: the flag is a CPU tensor; reading it costs nothing, the decision is immediate.
* CUDA: the flag is copied to pinned memory without blocking and an event recorded. Until the
  event has fired, the entry holds both the raw tensor and the quantized copy; each later pack
  and every unpack polls (``event.query()``, never a wait) and settles what has arrived, and an
  unpack of a still-undecided entry selects on the device (``torch.where``). ``settle()`` (called
  when a step's bytes are read, after the step) waits for the rest. Accounting is
  exact: a settled tensor counts either its raw bytes or payload + scales, never both. The price:
  a raw tensor lives until the GPU has run its quantize kernel, a few kernels after the CPU
  queued it; when the CPU runs far ahead of the GPU the peak can exceed the accounting by that lag.

int4 blocks store differently from int8 ones (QuantSettings defaults; measured side by side in
benchmarks/int4_study.py, docs/quantization.md): each group's scale and minimum are kept as
bfloat16 (``fedquad.quant.stored``), groups of signed tensors are Hadamard-rotated where that
narrows their range (``fedquad.quant.rotation``: spreads outlier channels), and tensors whose last
dimension is the attention head width (q, k, v in head layout, where an error is amplified through
the softmax) are kept at int8.

Quantization is eager in pack so the float tensor can be freed during the forward; unpack is
pure (it may run twice, e.g. with retain_graph=True). A tensor saved twice (q, k and v LoRA all
save the same block input) is stored once: dedup is by object identity through a weak
reference plus the version counter, never by data_ptr, because freed addresses are reused
within one forward.
"""

from __future__ import annotations

import collections
import dataclasses
import weakref
from dataclasses import dataclass, field

import torch

from fedquad.errors import FedquadError
from fedquad.quant import QuantizedTensor, stored


@dataclass
class BlockBytes:
    """What one block saved for backward in one step (bytes, exact)."""
    raw_bytes: int = 0          # size of every distinct saved activation at full precision
    kept_bytes: int = 0         # what is actually kept: payload + scales, or the raw tensor
    tensors: int = 0            # distinct saved activations
    quantized_tensors: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (kept unquantized)

    def add(self, other: "BlockBytes") -> None:
        self.raw_bytes += other.raw_bytes
        self.kept_bytes += other.kept_bytes
        self.tensors += other.tensors
        self.quantized_tensors += other.quantized_tensors
        for k, v in other.skipped.items():
            self.skipped[k] = self.skipped.get(k, 0) + v


@dataclass(frozen=True)
class QuantSettings:
    bits: int = field(default=8, metadata={"help": "8 or 4"})
    group_size: int = field(default=64, metadata={"help": "elements per min/max group"})
    stochastic: bool = field(default=False, metadata={"help": "stochastic rounding instead of nearest"})
    min_numel: int = field(default=1024, metadata={"help": "smaller tensors are kept as they are"})
    sqrt_nonnegative: bool = field(default=True, metadata={"help": "quantize non-negative tensors on a sqrt grid"})
    quantizer: str = field(default="auto", metadata={"help": "reference, fast or auto"})
    # int4 storage (docs/quantization.md, int4 section; benchmarks/int4_study.py measured the choice)
    rotation: str = field(default="int4", metadata={
        "help": "Hadamard-rotate each group of a signed tensor where that narrows its range: int4 (at 4 bits "
                "only), on, or off; native butterflies on CPU, a matmul elsewhere"})
    scale_dtype: str = field(default="auto", metadata={
        "help": "storage of each group's scale and minimum: float32, bfloat16, or auto (bfloat16 at 4 bits, "
                "float32 at 8)"})
    head_bits: int = field(default=8, metadata={
        "help": "bits, inside an int4 block, for tensors whose last dimension is the attention head width "
                "(q, k, v, attention output in head layout): 8, or 4 for no exception"})

    def __post_init__(self):
        if self.head_bits not in (8, 4):
            raise FedquadError(f"head_bits must be 8 or 4, got {self.head_bits!r}")
        if self.rotation not in ("int4", "on", "off"):
            raise FedquadError(f"rotation must be int4, on or off, got {self.rotation!r}")
        if self.scale_dtype not in ("auto", *stored.PARAM_DTYPES):
            raise FedquadError(f"scale_dtype must be auto, float32 or bfloat16, got {self.scale_dtype!r}")

    def rotates(self) -> bool:
        return self.rotation == "on" or (self.rotation == "int4" and self.bits == 4)

    def param_dtype(self) -> str:
        return ("bfloat16" if self.bits == 4 else "float32") if self.scale_dtype == "auto" else self.scale_dtype


class _Param:
    """Marker for a saved parameter (or a view of one): kept by reference, not counted."""
    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class _Deferred:
    """CUDA: a quantized tensor whose keep-raw flag is still on its way to the host. Holds both the
    raw tensor and the quantized copy until ``SavedTensorPolicy.settle`` drops one of them."""
    __slots__ = ("raw", "q", "flag", "host_flag", "event")

    def __init__(self, raw: torch.Tensor, q: QuantizedTensor, flag: torch.Tensor):
        self.raw, self.q, self.flag = raw, q, flag
        self.host_flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        self.host_flag.copy_(flag, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()


def parameter_storages(module: torch.nn.Module) -> set[int]:
    """Storage addresses of all parameters and buffers: they live for the whole run, so their
    addresses are never reused, unlike activations'."""
    out = set()
    for t in list(module.parameters()) + list(module.buffers()):
        out.add(t.untyped_storage().data_ptr())
    return out


def _huge_limit(dtype: torch.dtype) -> float:
    # Masks use the dtype minimum; real activations are many orders of magnitude smaller.
    return min(1e6, torch.finfo(dtype).max / 8)


class SavedTensorPolicy:
    """Pack/unpack hooks for one block. `quant=None` means account only (identity storage)."""

    def __init__(self, param_storages: set[int], quant: QuantSettings | None, generator: torch.Generator | None = None,
                 keep_last_dims: frozenset[int] = frozenset(), head_dims: frozenset[int] = frozenset()):
        self.param_storages = param_storages
        self.keep_last_dims = keep_last_dims
        self.head_dims = head_dims  # attention head width(s): see QuantSettings.head_bits
        self.quant = quant
        self.generator = generator
        self.bytes = BlockBytes()
        self._seen: dict[int, tuple[weakref.ref, int, object]] = {}
        self._pending: collections.deque[_Deferred] = collections.deque()
        self._quantizer = None
        if quant is not None:
            from fedquad.quant import get_quantizer
            self._quantizer = get_quantizer(quant.quantizer)

    def reset(self) -> None:
        self._pending.clear()  # the previous step's: its counts are being dropped anyway
        self.bytes = BlockBytes()
        self._seen.clear()

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    # -- hooks ------------------------------------------------------------------------------
    def pack(self, t: torch.Tensor):
        if t.untyped_storage().data_ptr() in self.param_storages:
            return _Param(t)
        entry = self._seen.get(id(t))
        if entry is not None:
            ref, version, packed = entry
            if ref() is t and t._version == version:
                return packed  # the same tensor saved again: store it once
        packed = self._pack_new(t)
        try:
            self._seen[id(t)] = (weakref.ref(t), t._version, packed)
        except TypeError:  # tensor subclasses without weakref support: no dedup
            pass
        return packed

    def _pack_new(self, t: torch.Tensor):
        raw = t.numel() * t.element_size()
        b = self.bytes
        b.raw_bytes += raw
        b.tensors += 1
        reason = self._skip_reason(t)
        if reason is not None:
            if self.quant is None:
                b.kept_bytes += raw
                return t
            return self._keep(t, raw, reason)
        # one call, one pass: the keep-raw and sqrt-grid decisions come out of the quantizer's own
        # per-group min/max, as device tensors (no host synchronisation)
        quant = self.quant
        if quant.bits == 4 and t.dim() > 0 and t.shape[-1] in self.head_dims:
            quant = dataclasses.replace(quant, bits=quant.head_bits)  # q, k, v in head layout
        x, flags = stored.prepare(t.detach(), quant.group_size, quant.rotates(), _huge_limit(t.dtype))
        q, keep_raw = self._quantizer.quantize_saved(
            x, quant.bits, quant.group_size, stochastic=quant.stochastic,
            generator=self.generator, sqrt_nonnegative=quant.sqrt_nonnegative, limit=_huge_limit(t.dtype))
        q = stored.store(q, flags, t.dtype, quant.param_dtype())  # 16-bit scales, rotation flags
        if keep_raw.device.type != "cpu":  # decided later, when the device has run the kernel
            return self._defer(t, q, keep_raw)
        return self._settled(t, q, bool(keep_raw))

    def _settled(self, t: torch.Tensor, q: QuantizedTensor, keep_raw: bool):
        if keep_raw:  # non-finite, or a mask filled with the dtype minimum
            return self._keep(t, t.numel() * t.element_size(), "non-finite or huge")
        self.bytes.kept_bytes += q.nbytes
        self.bytes.quantized_tensors += 1
        return q

    def _defer(self, t: torch.Tensor, q: QuantizedTensor, keep_raw: torch.Tensor) -> "_Deferred":
        entry = _Deferred(t, q, keep_raw)
        self._pending.append(entry)
        self.settle(wait=False)
        return entry

    def settle(self, wait: bool = True) -> BlockBytes:
        """Decide every deferred tensor whose flag has reached the host (all of them, waiting for
        the device, when ``wait``): drop its raw or its quantized copy and count what stays."""
        while self._pending:
            entry = self._pending[0]
            if not entry.event.query():
                if not wait:
                    break
                entry.event.synchronize()
            self._pending.popleft()
            if self._settled(entry.raw, entry.q, bool(entry.host_flag)) is entry.raw:
                entry.q = None
            else:
                entry.raw = None
            entry.flag = None
        return self.bytes

    def _keep(self, t: torch.Tensor, raw: int, reason: str) -> torch.Tensor:
        self.bytes.skipped[reason] = self.bytes.skipped.get(reason, 0) + 1
        self.bytes.kept_bytes += raw
        return t

    def _skip_reason(self, t: torch.Tensor) -> str | None:
        if self.quant is None:
            return "not quantized"
        if not t.is_floating_point():
            return "non-float"
        if t.numel() < self.quant.min_numel:
            return "tiny"
        if t.dim() > 0 and t.shape[-1] in self.keep_last_dims:
            return "LoRA bottleneck"
        return None

    def unpack(self, packed):
        if isinstance(packed, _Param):
            return packed.tensor
        if isinstance(packed, stored.StoredTensor):
            return stored.restore(packed, self._quantizer.dequantize)
        if isinstance(packed, _Deferred):
            self.settle(wait=False)
            if packed.q is None:
                return packed.raw
            if packed.raw is None:
                return stored.restore(packed.q, self._quantizer.dequantize)
            # still undecided: select on the device rather than wait for the flag
            return torch.where(packed.flag, packed.raw, stored.restore(packed.q, self._quantizer.dequantize))
        return packed
