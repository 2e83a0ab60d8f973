"""The whole training step's peak memory, measured exactly (docs/quantization.md, "What the memory
figures count").

What is measured: the largest number of bytes the step's tensors hold at any moment above what
was held before the step's plan started (the resident model: frozen weights and the adapter), in
the plan's own steps: a fresh AdamW optimizer over what the plan trains, `steps` steps of
forward + backward + gradient clipping + optimizer step (by default 2: the second step starts with
the optimizer state in memory, as every local step after the first does). It counts saved
activations, gradients, optimizer state and every transient (logits and their fp32 copies and
gradients, attention scores, workspace the backward allocates).

How, on CPU: torch's profiler with `profile_memory=True` has the CPU allocator report every
allocation and free with the allocator's running total (`total_allocated`). The largest running
total during the step is the peak, byte-exact and identical from run to run (the same ops allocate
the same sizes), and it cannot be confused by memory a previous step left to the C allocator or
to Python. Chosen over the alternatives because they are not exact: peak RSS is a process-lifetime
maximum and includes freed-but-not-returned heap; RSS sampled in a thread misses peaks between
samples and varies with malloc's trimming; a TorchDispatchMode sees op outputs but not the
autograd engine's own buffers (gradient accumulation). What it does not count: memory a BLAS /
oneDNN library takes from malloc for its own scratch (a few MB), and the Python interpreter.
On CUDA: `torch.cuda.reset_peak_memory_stats` + `max_memory_allocated` minus the memory allocated
at the start (the caching allocator's own exact count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys

import torch

from fedquad.client.runtime import PlanRuntime
from fedquad.client.saved_activations import QuantSettings
from fedquad.client.train import forward_backward
from fedquad.errors import FedquadError
from fedquad.models.adapted import AdaptedModel
from fedquad.plan import ClientPlan


def _train_step(adapted: AdaptedModel, runtime: PlanRuntime, params: list, optimizer, batch) -> None:
    """One local step as client/train.py runs it (forward, backward, clip, AdamW, zero_grad)."""
    forward_backward(adapted, runtime, batch)
    if optimizer is not None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _clear_grads(adapted: AdaptedModel) -> None:
    for p in adapted.model.parameters():
        p.grad = None


@contextlib.contextmanager
def _native_stderr_silenced():
    """Route file descriptor 2 to /dev/null for a moment: torch's profiler (kineto) writes status
    lines from C++ straight to it, which would land in the middle of a user's progress display."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peaks(runs: list) -> list[int]:
    """Per callable of `runs`, run one after the other in ONE profiler session (starting the
    profiler costs about a second; a profile measures dozens of plans): the largest running total
    of CPU allocator bytes while it executes, above the total when it started."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    names = [f"fedquad_step_peak_{k}" for k in range(len(runs))]
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False)
    with _native_stderr_silenced():  # kineto prints a "profiler_start" line to fd 2
        prof.__enter__()
    try:
        for name, run in zip(names, runs):
            with record_function(name):
                run()
    finally:
        with _native_stderr_silenced():  # ... and a "profiler_stop" line
            prof.__exit__(None, None, None)
    windows, allocations = {}, []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            if node.extra_fields.device.type == "cpu":
                allocations.append((node.start_time_ns, int(node.extra_fields.total_allocated)))
        elif node.name in names:
            windows[node.name] = (node.start_time_ns, node.end_time_ns)
        stack.extend(node.children)
    if not allocations or len(windows) != len(names):
        raise FedquadError("torch's profiler reported no CPU allocations for the step: this torch build "
                           "cannot measure CPU memory (profile_memory)")
    allocations.sort()
    peaks = []
    for name in names:
        start, end = windows[name]
        before = [t for ts, t in allocations if ts < start]
        base = before[-1] if before else 0
        inside = [t for ts, t in allocations if start <= ts <= end]
        peaks.append(max([0] + [t - base for t in inside]))
    return peaks


def _cpu_peak_bytes(run) -> int:
    """Largest running total of CPU allocator bytes while `run()` executes, above its start."""
    return _cpu_peaks([run])[0]


def measure_step_peaks(adapted: AdaptedModel, plans: list[ClientPlan], batch: dict[str, torch.Tensor],
                       quant: QuantSettings = QuantSettings(), seed: int = 0, steps: int = 2) -> list[int]:
    """`measure_step_peak_bytes` of each plan, in one profiler session on CPU."""
    if steps < 1:
        raise FedquadError(f"steps must be at least 1, got {steps}")
    for plan in plans:
        plan.validate_for(adapted.num_blocks)
    state = adapted.adapter_state()
    adapted.model.train()
    _clear_grads(adapted)
    batch = {k: v.to(adapted.device) for k, v in batch.items()}

    def runner(plan: ClientPlan):
        def run() -> None:
            torch.manual_seed(seed)
            with PlanRuntime(adapted, plan, dataclasses.replace(quant, bits=plan.bits), seed=seed) as runtime:
                params = runtime.trainable_parameters()
                optimizer = torch.optim.AdamW(params, lr=1e-6) if params else None
                for _ in range(steps):
                    _train_step(adapted, runtime, params, optimizer, batch)
                del optimizer, params
            _clear_grads(adapted)
            adapted.load_adapter_state(state)  # in place: allocates nothing
            gc.collect()  # the next plan starts from the resident model alone
        return run

    try:
        gc.collect()
        if adapted.device.type != "cuda":
            return _cpu_peaks([runner(p) for p in plans])
        peaks = []
        for plan in plans:
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            runner(plan)()
            torch.cuda.synchronize()
            peaks.append(int(torch.cuda.max_memory_allocated() - start))
        return peaks
    finally:
        _clear_grads(adapted)
        adapted.load_adapter_state(state)


def measure_step_peak_bytes(adapted: AdaptedModel, plan: ClientPlan, batch: dict[str, torch.Tensor],
                            quant: QuantSettings = QuantSettings(), seed: int = 0, steps: int = 2) -> int:
    """Peak bytes above the resident model of `steps` local steps of `plan` on `batch` (see the
    module docstring). Leaves the adapter as found (the steps train with a tiny learning rate;
    the adapter state is restored)."""
    return measure_step_peaks(adapted, [plan], batch, quant, seed, steps)[0]
