"""`fedquad profile`: measure everything the cost model needs on the machine at hand.

Saved bytes per block are exact (pack-hook accounting). Times are medians of repeated steps
after warm-up. Per-block backward and quantization times come from differences between whole
steps: T(depth d) - T(depth d-1) is what training one more block costs, and
T(L, q) - T(L, q-1) what quantizing one more block costs. Summed back, these reproduce the
measured step of every depth by construction, so the cost model is checked against noise, not
against a modelling shortcut. Forward time per block comes from hooks around each block.
"""

from __future__ import annotations

import statistics
import time

import torch

from fedquad.client.runtime import PlanRuntime
from fedquad.client.saved_activations import QuantSettings
from fedquad.client.train import forward_backward
from fedquad.models.adapted import AdaptedModel
from fedquad.plan import ClientPlan

SCHEMA_VERSION = 1
ADAMW_STATE_FACTOR = 3.0  # gradient + exp_avg + exp_avg_sq per trainable byte


def _sync(adapted: AdaptedModel) -> None:
    if adapted.device.type == "cuda":
        torch.cuda.synchronize()


def machine_gflops(device: torch.device, size: int = 1024, repeats: int = 10) -> float:
    """Sustained fp32 matmul throughput: the yardstick device speeds are expressed against."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


class _StepTimer:
    """Median full-step time (forward + backward + AdamW step) of a plan, and per-block forward."""

    def __init__(self, adapted: AdaptedModel, batch, quant: QuantSettings, repeats: int, warmup: int):
        self.adapted, self.batch, self.quant = adapted, batch, quant
        self.repeats, self.warmup = repeats, warmup

    def measure(self, plan: ClientPlan):
        adapted = self.adapted
        quant = QuantSettings(plan.bits, self.quant.group_size, self.quant.stochastic, self.quant.min_numel,
                              self.quant.quantizer)
        block_fwd: list[list[float]] = [[] for _ in range(adapted.num_blocks)]
        starts: dict[int, float] = {}

        def pre(i):
            def hook(module, args):
                _sync(adapted)
                starts[i] = time.perf_counter()
            return hook

        def post(i):
            def hook(module, args, out):
                _sync(adapted)
                block_fwd[i].append(time.perf_counter() - starts[i])
            return hook

        handles = []
        for i, block in enumerate(adapted.blocks):
            handles.append(block.register_forward_pre_hook(pre(i)))
            handles.append(block.register_forward_hook(post(i)))
        step_times, bytes_ = [], None
        try:
            with PlanRuntime(adapted, plan, quant) as runtime:
                params = runtime.trainable_parameters()
                opt = torch.optim.AdamW(params, lr=1e-6) if params else None
                for r in range(self.warmup + self.repeats):
                    _sync(adapted)
                    start = time.perf_counter()
                    forward_backward(adapted, runtime, self.batch)
                    if opt is not None:
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    _sync(adapted)
                    if r >= self.warmup:
                        step_times.append(time.perf_counter() - start)
                bytes_ = (runtime.block_bytes(), runtime.outside_bytes())
        finally:
            for h in handles:
                h.remove()
        fwd = [statistics.median(t[self.warmup:]) for t in block_fwd]
        return statistics.median(step_times), fwd, bytes_


def profile_model(adapted: AdaptedModel, batch: dict[str, torch.Tensor], *, quant: QuantSettings = QuantSettings(),
                  repeats: int = 5, warmup: int = 2, progress=None) -> dict:
    """The profile dict (schema version 1) for `adapted` at this batch's shape."""
    L = adapted.num_blocks
    timer = _StepTimer(adapted, batch, quant, repeats, warmup)
    global_state = adapted.adapter_state()
    adapted.model.train()

    def tick():
        if progress:
            progress()

    depth_time, fwd0, full_bytes = [], None, None
    for d in range(L + 1):
        t, fwd, b = timer.measure(ClientPlan(d))
        depth_time.append(t)
        if d == 0:
            fwd0 = fwd
            head_saved_depth0 = b[1].kept_bytes
        if d == L:
            full_bytes = b
        tick()
    kept = {}
    quant_time = {}
    for bits in (8, 4):
        times = [depth_time[L]]
        for q in range(1, L + 1):
            t, _, b = timer.measure(ClientPlan(L, q, bits))
            times.append(t)
            tick()
        kept[bits] = [x.kept_bytes for x in b[0]]  # q == L: every block quantized
        # T(L, q) - T(L, q-1) is the cost of quantizing block q-1 (bottom placement)
        quant_time[bits] = [max(0.0, times[q + 1] - times[q]) for q in range(L)]
    adapted.load_adapter_state(global_state)

    block_bytes, outside = full_bytes
    per_block_adapter, head_adapter = adapted.block_adapter_bytes()
    frozen = sum(p.numel() * p.element_size() for p in adapted.model.parameters())
    frozen -= sum(per_block_adapter) + head_adapter
    blocks = []
    for i in range(L):
        depth = L - i  # depth at which block i becomes trainable
        blocks.append({
            "index": i,
            "saved_bytes": block_bytes[i].raw_bytes,
            "kept_bytes": {"8": kept[8][i], "4": kept[4][i]},
            "adapter_bytes": per_block_adapter[i],
            "forward_s": fwd0[i],
            "backward_s": max(0.0, depth_time[depth] - depth_time[depth - 1]),
            "quant_s": {"8": quant_time[8][i], "4": quant_time[4][i]},
        })
    total_saved = sum(b["saved_bytes"] for b in blocks)
    ratio = {str(bits): sum(kept[bits]) / total_saved if total_saved else 1.0 for bits in (8, 4)}
    input_ids = batch["input_ids"]
    return {
        "schema_version": SCHEMA_VERSION,
        "model": adapted.name,
        "family": adapted.family,
        "task": adapted.task,
        "num_blocks": L,
        "batch_size": int(input_ids.shape[0]),
        "seq_len": int(input_ids.shape[1]),
        "dtype": str(next(adapted.model.parameters()).dtype).replace("torch.", ""),
        "device": adapted.device.type,
        "group_size": quant.group_size,
        "machine_gflops": machine_gflops(adapted.device),
        "frozen_weight_bytes": frozen,
        "adapter_bytes": sum(per_block_adapter) + head_adapter,
        "head_adapter_bytes": head_adapter,
        "optimizer_bytes_per_trainable_byte": ADAMW_STATE_FACTOR,
        # Estimate of transient memory beyond saved activations: one block's activations being
        # rebuilt into gradients during backward.
        "workspace_bytes": max(b["saved_bytes"] for b in blocks) if blocks else 0,
        # Everything outside the blocks (embeddings, head forward and backward, optimizer step)
        # is charged to the head's forward time: T(depth 0) minus the blocks' forward.
        "embedding_forward_s": 0.0,
        "head": {"saved_bytes": outside.kept_bytes, "saved_bytes_depth0": head_saved_depth0,
                 "forward_s": max(0.0, depth_time[0] - sum(fwd0)), "backward_s": 0.0},
        "kept_ratio": ratio,
        "blocks": blocks,
        "measured_step_s": {"by_depth": depth_time},
    }
