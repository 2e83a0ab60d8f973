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
narrows their range (``fedquad.quant.rotation``: spreads outlier channels), and two kinds of tensor
are kept at int8 codes (with the block's bfloat16 scales): those whose last dimension is the
attention head width (q, k, v in head layout, where an error is amplified through the softmax),
and the input of the block's activation function (GELU, SiLU: its derivative turns a small input
error into a large gradient error). The latter is found by a module pre-hook that ``hooks()``
installs for the block's forward (the input storage of every activation module is noted).

At any width, a CPU tensor of two values {0, c} (dropout masks: 1/6 of a MiniLM block's saved
bytes) is kept exactly as one bit per element (``stored.two_valued``, found by a 64-element probe
before one full check, so other tensors pay almost nothing; off on CUDA, where dropout saves bool
masks and the check would read device data). Together these two rules buy the int8 activation
input for nothing: MiniLM at full int4 goes from a worst gradient cosine of 0.967 to 0.98 at
kept/raw 0.16 (docs/quantization.md, section 5).

Quantization is eager in pack so the float tensor can be freed during the forward; unpack is
pure (it may run twice, e.g. with retain_graph=True).

Storage-exact: a storage is stored and counted once per step, whatever views of it are saved.
The q, k and v LoRA of a block each save their own view object of the block input (same storage,
same geometry): the second and third get the first's packed result. A view with another geometry
of a storage whose whole is packed already gets that packed whole plus its geometry (``_View``,
re-made with ``as_strided`` on unpack); partial views of a storage nobody saved whole are packed
each on their own (measured: neither MiniLM nor tiny LLaMA saves one; benchmarks/saved_views.py).
``raw_bytes`` counts each storage at its full size once, which is what memory holds, and equals
an independent storage-level count (tests/test_saved_activations.py). Storages are told apart
by a weak reference to the storage object, the view's root tensor and the version counter, never
by data_ptr: freed addresses are reused within one forward, and a dead weak reference never
matches. The table is weak throughout, so a packed result lives exactly as long as autograd
holds it: backward frees each as it consumes it, and nothing of the step is retained after it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import weakref
from dataclasses import dataclass, field

import torch

from fedquad.errors import FedquadError
from fedquad.plan import DEFAULT_GROUP_SIZE
from fedquad.client.saved_records import (_Deferred, _Param, _Storage, _View, _covers, _dtype, _geometry,
                                          _is_activation, _nbytes)
from fedquad.quant import QuantizedTensor, stored


@dataclass
class BlockBytes:
    """What one block saved for backward in one step (bytes, exact)."""
    raw_bytes: int = 0          # every distinct storage of a saved activation, at full size, once
    kept_bytes: int = 0         # what is actually kept: payload + scales, or the raw storage (once)
    tensors: int = 0            # distinct storages saved
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
    group_size: int = field(default=DEFAULT_GROUP_SIZE, metadata={"help": "elements per min/max group"})
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
    activation_bits: int = field(default=8, metadata={
        "help": "bits, inside an int4 block, for the input of the block's activation function (GELU, SiLU): "
                "8, or 4 for no exception"})
    two_valued: bool = field(default=True, metadata={
        "help": "keep a CPU tensor of two values {0, c} (a dropout mask) exactly, as one bit per element"})

    def __post_init__(self):
        for name in ("head_bits", "activation_bits"):
            if getattr(self, name) not in (8, 4):
                raise FedquadError(f"{name} must be 8 or 4, got {getattr(self, name)!r}")
        if self.rotation not in ("int4", "on", "off"):
            raise FedquadError(f"rotation must be int4, on or off, got {self.rotation!r}")
        if self.scale_dtype not in ("auto", *stored.PARAM_DTYPES):
            raise FedquadError(f"scale_dtype must be auto, float32 or bfloat16, got {self.scale_dtype!r}")

    def rotates(self) -> bool:
        return self.rotation == "on" or (self.rotation == "int4" and self.bits == 4)

    def param_dtype(self) -> str:
        return ("bfloat16" if self.bits == 4 else "float32") if self.scale_dtype == "auto" else self.scale_dtype


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
        self._seen: dict[int, _Storage] = {}  # id(storage) -> what this step packed of it
        self._activation_inputs: dict[int, weakref.ref] = {}  # id(storage) -> the input of an activation module
        self._pending: collections.deque[tuple[_Deferred, _Storage, int]] = collections.deque()
        self._quantizer = None
        if quant is not None:
            from fedquad.quant import get_quantizer
            self._quantizer = get_quantizer(quant.quantizer)

    def reset(self) -> None:
        self._pending.clear()  # the previous step's: its counts are being dropped anyway
        self.bytes = BlockBytes()
        self._seen.clear()
        self._activation_inputs.clear()

    def retained_bytes(self) -> int:
        """Bytes of packed results this policy alone still keeps alive (its tables are weak: 0;
        pending CUDA decisions hold theirs until settled)."""
        return sum(_nbytes(d.raw) + _nbytes(d.q) for d, _, _ in self._pending)

    @contextlib.contextmanager
    def hooks(self):
        """The pack/unpack hooks around one block's forward; in an int4 block with an activation
        exception, also a module pre-hook that notes the input storage of every activation module."""
        watch = self.quant is not None and self.quant.bits == 4 and self.quant.activation_bits != 4
        handle = torch.nn.modules.module.register_module_forward_pre_hook(self._note_activation) if watch else None
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
                yield self
        finally:
            if handle is not None:
                handle.remove()

    def _note_activation(self, module, args):
        if args and isinstance(args[0], torch.Tensor) and _is_activation(module):
            storage = args[0].untyped_storage()
            self._activation_inputs[id(storage)] = weakref.ref(storage)

    def _is_activation_input(self, t: torch.Tensor) -> bool:
        storage = t.untyped_storage()
        ref = self._activation_inputs.get(id(storage))
        return ref is not None and ref() is storage

    # -- hooks ------------------------------------------------------------------------------
    def pack(self, t: torch.Tensor):
        """Store ``t`` once per storage: a view of a storage already packed in this step reuses
        that packed result (same geometry) or re-views its packed whole; bytes count storages."""
        storage = t.untyped_storage()
        if storage.data_ptr() in self.param_storages:
            return _Param(t)
        entry = self._entry(t, storage)
        key = _geometry(t)
        packed = entry.lookup(key)
        if packed is not None:
            return packed  # the same view saved again (q, k and v LoRA all save the block input)
        whole = None if entry.whole is None else entry.whole()
        if whole is not None and key[3] == _dtype(whole):
            if isinstance(whole, torch.Tensor):
                return t  # the raw storage is kept already: this view holds nothing more
            packed = _View(whole, t)  # re-view the packed (quantized) whole on unpack
        else:
            packed = self._pack_new(t, entry, storage.nbytes())
        entry.remember(key, packed, _covers(t, storage.nbytes()))
        return packed

    def _entry(self, t: torch.Tensor, storage) -> _Storage:
        root = t if t._base is None else t._base
        entry = self._seen.get(id(storage))
        if entry is not None and entry.storage() is storage:
            if entry.root() is root and root._version == entry.version:
                return entry
            # the same storage through another alias, or changed in place: nothing packed is
            # reused, but the storage is still counted once
            fresh = _Storage(storage, root)
            fresh.raw_held = entry.raw_held
            self._seen[id(storage)] = fresh
            return fresh
        entry = _Storage(storage, root)
        self._seen[id(storage)] = entry
        self.bytes.raw_bytes += storage.nbytes()  # a storage the step has not counted yet
        self.bytes.tensors += 1
        return entry

    def _pack_new(self, t: torch.Tensor, entry: _Storage, storage_nbytes: int):
        reason = self._skip_reason(t, storage_nbytes)
        if reason is not None:
            return self._keep(t, entry, storage_nbytes, reason)
        quant = self.quant
        if quant.two_valued:
            exact = stored.two_valued(t)  # CPU dropout masks: one bit per element, exactly
            if exact is not None:
                self.bytes.kept_bytes += exact.nbytes
                self.bytes.quantized_tensors += 1
                return exact
        # one call, one pass: the keep-raw and sqrt-grid decisions come out of the quantizer's own
        # per-group min/max, as device tensors (no host synchronisation)
        param_dtype = quant.param_dtype()  # an int4 block's exceptions keep its 16-bit scales too
        if quant.bits == 4 and t.dim() > 0 and t.shape[-1] in self.head_dims:
            quant = dataclasses.replace(quant, bits=quant.head_bits)  # q, k, v in head layout
        elif quant.bits == 4 and self._is_activation_input(t):
            quant = dataclasses.replace(quant, bits=quant.activation_bits)  # GELU / SiLU input
        x, flags = stored.prepare(t.detach(), quant.group_size, quant.rotates(), _huge_limit(t.dtype))
        q, keep_raw = self._quantizer.quantize_saved(
            x, quant.bits, quant.group_size, stochastic=quant.stochastic,
            generator=self.generator, sqrt_nonnegative=quant.sqrt_nonnegative, limit=_huge_limit(t.dtype))
        q = stored.store(q, flags, t.dtype, param_dtype)  # 16-bit scales, rotation flags
        if keep_raw.device.type != "cpu":  # decided later, when the device has run the kernel
            return self._defer(t, q, keep_raw, entry, storage_nbytes)
        return self._settled(t, q, bool(keep_raw), entry, storage_nbytes)

    def _settled(self, t: torch.Tensor, q: QuantizedTensor, keep_raw: bool, entry: _Storage, storage_nbytes: int):
        if keep_raw:  # non-finite, or a mask filled with the dtype minimum
            return self._keep(t, entry, storage_nbytes, "non-finite or huge")
        self.bytes.kept_bytes += q.nbytes
        self.bytes.quantized_tensors += 1
        return q

    def _defer(self, t: torch.Tensor, q: QuantizedTensor, keep_raw: torch.Tensor, entry: _Storage,
               storage_nbytes: int) -> "_Deferred":
        d = _Deferred(t, q, keep_raw)
        self._pending.append((d, entry, storage_nbytes))
        self.settle(wait=False)
        return d

    def settle(self, wait: bool = True) -> BlockBytes:
        """Decide every deferred tensor whose flag has reached the host (all of them, waiting for
        the device, when ``wait``): drop its raw or its quantized copy and count what stays."""
        while self._pending:
            d, entry, storage_nbytes = self._pending[0]
            if not d.event.query():
                if not wait:
                    break
                d.event.synchronize()
            self._pending.popleft()
            if self._settled(d.raw, d.q, bool(d.host_flag), entry, storage_nbytes) is d.raw:
                d.q = None
            else:
                d.raw = None
            d.flag = None
        return self.bytes

    def _keep(self, t: torch.Tensor, entry: _Storage, storage_nbytes: int, reason: str) -> torch.Tensor:
        """Keep ``t`` as it is: its storage counts once, however many views of it are kept."""
        if reason != "not quantized":
            self.bytes.skipped[reason] = self.bytes.skipped.get(reason, 0) + 1
        if not entry.raw_held:
            entry.raw_held = True
            self.bytes.kept_bytes += storage_nbytes
        return t

    def _skip_reason(self, t: torch.Tensor, storage_nbytes: int) -> str | None:
        if self.quant is None:
            return "not quantized"
        if t.numel() * t.element_size() > storage_nbytes:
            return "overlapping view"  # e.g. an expanded mask: its codes would outweigh the storage
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
        if isinstance(packed, _View):
            whole = self.unpack(packed.whole).contiguous()
            return whole.as_strided(packed.size, packed.stride, whole.storage_offset() + packed.offset)
        if isinstance(packed, stored.StoredTensor):
            return stored.restore(packed, self._quantizer.dequantize)
        if isinstance(packed, stored.TwoValued):
            return stored.restore_two_valued(packed)
        if isinstance(packed, _Deferred):
            self.settle(wait=False)
            if packed.q is None:
                return packed.raw
            if packed.raw is None:
                return stored.restore(packed.q, self._quantizer.dequantize)
            # still undecided: select on the device rather than wait for the flag
            return torch.where(packed.flag, packed.raw, stored.restore(packed.q, self._quantizer.dequantize))
        return packed
