"""Apply a ClientPlan to an AdaptedModel: which LoRA tensors train, which blocks run under
no_grad, which keep int8/int4 saved activations.

Per block a forward pre-hook and an always-called forward hook bracket the block's forward:
blocks below the trainable segment run with grad disabled (so autograd records and saves
nothing there: the saving is real, not bookkeeping), trainable blocks run inside their own
saved-tensor policy. Everything outside the blocks (embeddings, final norm, pooler, head) runs
inside an accounting-only policy so the total is exact too.
"""

from __future__ import annotations

import contextlib

import torch

from fedquad.client.saved_activations import BlockBytes, QuantSettings, SavedTensorPolicy, parameter_storages
from fedquad.models.adapted import AdaptedModel
from fedquad.plan import ClientPlan, TrainOptions


class PlanRuntime:
    """Installed on a model for the duration of a `with` block; `step()` brackets one forward."""

    def __init__(self, adapted: AdaptedModel, plan: ClientPlan, quant: QuantSettings = QuantSettings(),
                 seed: int = 0, options: TrainOptions = TrainOptions()):
        self.adapted, self.plan, self.quant_settings = adapted, plan, quant
        L = adapted.num_blocks
        plan.validate_for(L)
        self.skipped = options.skip_blocks(L)  # bypassed blocks (FedRA sub-models): no compute kept
        self.trainable = set(plan.trainable_blocks(L)) - self.skipped
        self.quantized = set(plan.quantized_blocks(L)) - self.skipped
        self.trainable_keys = [k for k in adapted.keys_for_plan(plan) if adapted.key_block[k] not in self.skipped]
        storages = parameter_storages(adapted.model)
        generator = None
        if quant.stochastic:  # its own generator: stochastic rounding must not shift dropout's RNG
            generator = torch.Generator(device=adapted.device).manual_seed(seed)
        keep = frozenset({adapted.lora_rank})
        heads = frozenset(d for d in (_head_dim(adapted.model.config),) if d)  # int4 keeps these at int8
        self.policies = [SavedTensorPolicy(storages, quant if i in self.quantized else None, generator, keep, heads)
                         for i in range(L)]
        self.outside = SavedTensorPolicy(storages, None)
        self._handles: list = []
        self._stack: list = []

    # -- install / remove ---------------------------------------------------------------------
    def __enter__(self) -> "PlanRuntime":
        keys = set(self.trainable_keys)
        for key in self.adapted.adapter_keys:
            self.adapted.parameter(key).requires_grad_(key in keys)
        for i, block in enumerate(self.adapted.blocks):
            self._handles.append(block.register_forward_pre_hook(self._make_pre(i), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._make_post(i), always_call=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        while self._stack:  # only after an exception inside a block's forward
            self._stack.pop().__exit__(None, None, None)

    def _make_pre(self, index: int):
        def pre(module, args, kwargs):
            if index in self.skipped:  # remember the input: the block's output is replaced by it
                self._bypass_input = args[0] if args else kwargs["hidden_states"]
            if index in self.trainable:
                ctx = self.policies[index].hooks()
                if self.adapted.device.type == "cuda":
                    ctx = _with_math_attention(ctx)
            else:
                ctx = torch.no_grad()
            ctx.__enter__()
            self._stack.append(ctx)
        return pre

    def _make_post(self, index: int):
        def post(module, args, output):
            self._stack.pop().__exit__(None, None, None)
            if index in self.skipped:  # identity block: same output structure, hidden states passed through
                hidden, self._bypass_input = self._bypass_input, None
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            return None
        return post

    # -- per step ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self):
        """Bracket one forward (+ backward): resets the byte counts, accounts non-block tensors."""
        for p in self.policies:
            p.reset()
        self.outside.reset()
        with self.outside.hooks():
            yield self

    def block_bytes(self) -> list[BlockBytes]:
        return [p.settle() for p in self.policies]  # settle: CUDA keep-raw decisions still in flight

    def outside_bytes(self) -> BlockBytes:
        return self.outside.settle()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.adapted.parameter(k) for k in self.trainable_keys]


def _head_dim(config) -> int | None:
    """Per-head attention width (transformers configs map hidden_size / num_attention_heads for
    every family); None when the config does not say."""
    explicit = getattr(config, "head_dim", None)
    if explicit:
        return int(explicit)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    return hidden // heads if hidden and heads else None


@contextlib.contextmanager
def _with_math_attention(hooks):
    """A trainable block on CUDA runs attention on SDPA's math backend.

    The fused CUDA kernels (flash, memory-efficient) save q, k, v and the softmax log-sum-exp and
    recompute the probabilities in backward; a quantization error in the log-sum-exp or in q/k
    becomes a multiplicative error on every probability of the row. Measured on an H200, MiniLM
    with all blocks int4 had a worst LoRA-gradient cosine of 0.05 that way. The math backend saves
    the probabilities themselves, which the square-root grid keeps accurately (as on CPU). Every
    trainable block uses it, quantized or not, so that a plan and its unquantized reference draw
    identical dropout masks and the saved tensors are the same kind on CPU and CUDA; frozen
    blocks (no_grad, nothing saved) keep the fused kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH), hooks:
        yield
