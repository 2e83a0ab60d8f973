"""Local training on one client: load the global adapter, train what the plan allows, return
only the trained tensors and measured metrics (time, exact saved-activation bytes)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch

from fedquad.client.runtime import PlanRuntime
from fedquad.client.saved_activations import QuantSettings
from fedquad.errors import FedquadError
from fedquad.models.adapted import AdaptedModel
from fedquad.plan import ClientPlan, TrainOptions


class ClientOutOfMemory(FedquadError):
    """The plan's measured saved activations exceed what the device has: it fails as if out of memory."""

    def __init__(self, saved_bytes: float, limit_bytes: float):
        self.saved_bytes, self.limit_bytes = saved_bytes, limit_bytes
        super().__init__(f"saved activations {saved_bytes / 2**20:.1f} MiB exceed the "
                         f"{max(limit_bytes, 0) / 2**20:.1f} MiB the device has left for them")


@dataclass(frozen=True)
class LocalTrainConfig:
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate for LoRA and head"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping; 0 disables"})
    local_steps: int = field(default=10, metadata={"help": "optimizer steps per round (batches consumed)"})
    seed: int = field(default=0, metadata={"help": "seeds dropout and stochastic rounding"})
    quant: QuantSettings = field(default_factory=QuantSettings, metadata={"help": "activation quantization"})

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.local_steps <= 0:
            raise FedquadError("learning_rate and local_steps must be positive")


@dataclass
class LocalMetrics:
    examples: int = 0
    steps: int = 0
    loss: float = float("nan")                                    # mean training loss over steps
    step_times_s: list[float] = field(default_factory=list)
    block_raw_bytes: list[int] = field(default_factory=list)      # per block, max over steps
    block_kept_bytes: list[int] = field(default_factory=list)
    outside_bytes: int = 0                                        # embeddings/head, max over steps

    @property
    def saved_raw_bytes(self) -> int:
        return sum(self.block_raw_bytes) + self.outside_bytes

    @property
    def saved_kept_bytes(self) -> int:
        return sum(self.block_kept_bytes) + self.outside_bytes

    def to_dict(self) -> dict:
        return {"examples": self.examples, "steps": self.steps, "loss": self.loss,
                "step_times_s": self.step_times_s, "block_raw_bytes": self.block_raw_bytes,
                "block_kept_bytes": self.block_kept_bytes, "outside_bytes": self.outside_bytes,
                "saved_raw_bytes": self.saved_raw_bytes, "saved_kept_bytes": self.saved_kept_bytes}


@dataclass
class LocalResult:
    update: dict[str, torch.Tensor]   # only the tensors this client trained (CPU copies)
    metrics: LocalMetrics


def forward_backward(adapted: AdaptedModel, runtime: PlanRuntime, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward and backward under the plan; returns the (detached) loss."""
    batch = {k: v.to(adapted.device) for k, v in batch.items()}
    with runtime.step():
        loss = adapted.model(**batch).loss
        if loss.requires_grad:  # a causal LM at depth 0 has nothing to train
            loss.backward()
    return loss.detach()


def train_local(adapted: AdaptedModel, global_state: dict[str, torch.Tensor], plan: ClientPlan,
                batches: Iterable[dict[str, torch.Tensor]], config: LocalTrainConfig = LocalTrainConfig(),
                options: TrainOptions = TrainOptions(), saved_limit_bytes: float | None = None) -> LocalResult:
    """Train `config.local_steps` batches with `plan`; returns trained tensors and metrics.

    `options` carries what a baseline changes beyond the plan (FedRA block subsets, HetLoRA ranks).
    With `saved_limit_bytes`, the first step whose exactly measured saved activations exceed it
    raises ClientOutOfMemory: the simulator's stand-in for a device running out of memory."""
    adapted.load_adapter_state(global_state)
    _clear_grads(adapted)  # whatever an earlier call left must not enter this client's first step
    adapted.model.train()
    torch.manual_seed(config.seed)
    metrics = LocalMetrics(block_raw_bytes=[0] * adapted.num_blocks, block_kept_bytes=[0] * adapted.num_blocks)
    losses = []
    quant = dataclasses.replace(config.quant, bits=plan.bits)  # the plan decides the bit width
    with PlanRuntime(adapted, plan, quant, seed=config.seed, options=options) as runtime, \
            _rank_limited(adapted, runtime.trainable_keys, options.rank):
        params = runtime.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay) if params else None
        try:
            update = _train_steps(adapted, runtime, params, optimizer, batches, config, metrics, losses,
                                  saved_limit_bytes)
        finally:
            # A failed client (out of memory, bad batch) must not leave gradients on the shared
            # model: the next client's first backward would add its own on top of them.
            _clear_grads(adapted)
    if metrics.steps == 0:
        raise FedquadError("local training received no batches")
    metrics.loss = sum(losses) / len(losses)
    return LocalResult(update=update, metrics=metrics)


def _clear_grads(adapted: AdaptedModel) -> None:
    for p in adapted.model.parameters():
        p.grad = None


def _train_steps(adapted: AdaptedModel, runtime: PlanRuntime, params: list, optimizer, batches,
                 config: LocalTrainConfig, metrics: LocalMetrics, losses: list[float],
                 saved_limit_bytes: float | None) -> dict[str, torch.Tensor]:
    """The step loop of `train_local`; returns CPU copies of the trained tensors."""
    for batch in batches:
        if metrics.steps >= config.local_steps:
            break
        start = time.perf_counter()
        loss = forward_backward(adapted, runtime, batch)
        if saved_limit_bytes is not None:
            saved = sum(b.kept_bytes for b in runtime.block_bytes()) + runtime.outside_bytes().kept_bytes
            if saved > saved_limit_bytes:
                raise ClientOutOfMemory(saved, saved_limit_bytes)
        if optimizer is not None:
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        metrics.step_times_s.append(time.perf_counter() - start)
        losses.append(float(loss))
        metrics.steps += 1
        metrics.examples += int(batch["labels"].shape[0])
        for i, b in enumerate(runtime.block_bytes()):
            metrics.block_raw_bytes[i] = max(metrics.block_raw_bytes[i], b.raw_bytes)
            metrics.block_kept_bytes[i] = max(metrics.block_kept_bytes[i], b.kept_bytes)
        metrics.outside_bytes = max(metrics.outside_bytes, runtime.outside_bytes().kept_bytes)
    return {k: adapted.parameter(k).detach().to("cpu", copy=True) for k in runtime.trainable_keys}


@contextlib.contextmanager
def _rank_limited(adapted: AdaptedModel, keys: list[str], rank: int | None):
    """HetLoRA: zero LoRA components >= rank (rows of A, columns of B) and keep their gradients zero."""
    if rank is None or rank >= adapted.lora_rank:
        yield
        return
    handles = []
    with torch.no_grad():
        for key in keys:
            p = adapted.parameter(key)
            if "lora_A" in key:
                mask = torch.zeros_like(p)
                mask[:rank] = 1
            elif "lora_B" in key:
                mask = torch.zeros_like(p)
                mask[:, :rank] = 1
            else:
                continue
            p.mul_(mask)
            handles.append(p.register_hook(lambda g, m=mask: g * m))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
