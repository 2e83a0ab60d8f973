"""The records behind `SavedTensorPolicy` (fedquad/client/saved_activations.py): what a pack hook
returns besides a tensor or a StoredTensor, and the per-storage entry of the weak dedup table.
Split out so the policy reads as its rules."""

from __future__ import annotations

import weakref

import torch

from fedquad.quant import QuantizedTensor


class _Param:
    """Marker for a saved parameter (or a view of one): kept by reference, not counted."""
    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class _View:
    """A saved view of a storage whose whole was packed already: the packed whole plus the view's
    geometry; unpack re-makes the view from the restored whole (no second copy, no second quantization)."""
    __slots__ = ("whole", "size", "stride", "offset", "__weakref__")

    def __init__(self, whole, t: torch.Tensor):
        self.whole, self.size, self.stride, self.offset = whole, tuple(t.shape), t.stride(), t.storage_offset()


class _Deferred:
    """CUDA: a quantized tensor whose keep-raw flag is still on its way to the host. Holds both the
    raw tensor and the quantized copy until ``SavedTensorPolicy.settle`` drops one of them."""
    __slots__ = ("raw", "q", "flag", "host_flag", "event", "__weakref__")

    def __init__(self, raw: torch.Tensor, q: QuantizedTensor, flag: torch.Tensor):
        self.raw, self.q, self.flag = raw, q, flag
        self.host_flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        self.host_flag.copy_(flag, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()


class _Storage:
    """One activation storage seen in this step. Everything is weak: the entry never keeps a storage
    or a packed result alive (autograd does, until backward has consumed it), and a dead reference
    can never match a new storage that reuses the address."""
    __slots__ = ("storage", "root", "version", "raw_held", "views", "whole")

    def __init__(self, storage, root: torch.Tensor):
        self.storage, self.root, self.version = weakref.ref(storage), weakref.ref(root), root._version
        self.raw_held = False  # the raw storage is kept (and counted in kept_bytes) already
        self.views: dict[tuple, weakref.ref] = {}  # geometry -> packed result
        self.whole: weakref.ref | None = None  # packed result covering the whole storage

    def lookup(self, key: tuple):
        ref = self.views.get(key)
        return None if ref is None else ref()

    def remember(self, key: tuple, packed, covers: bool) -> None:
        try:
            ref = weakref.ref(packed)
        except TypeError:  # tensor subclasses without weakref support: no dedup
            return
        self.views[key] = ref
        if covers and (self.whole is None or self.whole() is None):
            self.whole = ref


def _geometry(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.stride(), t.storage_offset(), t.dtype


def _covers(t: torch.Tensor, nbytes: int) -> bool:
    """The view is its whole storage, in order: any other view of it can be re-made by as_strided."""
    return t.storage_offset() == 0 and t.numel() * t.element_size() == nbytes and t.is_contiguous()


_ACTIVATION_TYPES = (torch.nn.GELU, torch.nn.SiLU, torch.nn.ReLU, torch.nn.Tanh, torch.nn.Mish, torch.nn.LeakyReLU,
                     torch.nn.ELU, torch.nn.Hardswish)


def _is_activation(module: torch.nn.Module) -> bool:
    """An activation-function module: torch's own, or transformers' (ACT2FN: GELUActivation, ...)."""
    return isinstance(module, _ACTIVATION_TYPES) or type(module).__module__ == "transformers.activations"


def _dtype(packed) -> torch.dtype:
    if isinstance(packed, torch.Tensor):
        return packed.dtype
    if isinstance(packed, _Deferred):
        return packed.raw.dtype if packed.raw is not None else packed.q.dtype
    if isinstance(packed, _View):
        return _dtype(packed.whole)
    return packed.dtype  # StoredTensor


def _nbytes(packed) -> int:
    if packed is None:
        return 0
    if isinstance(packed, torch.Tensor):
        return packed.untyped_storage().nbytes()
    return packed.nbytes
