"""One sweep over every plan, shared by the client and causal-LM tests (no copy per model kind).

`train_every_plan` trains one step under each (depth, quantized blocks, bits) of a model and
checks what every plan must give: exactly the plan's keys uploaded, each of them changed, a
finite loss over the batch's examples, nothing kept for the frozen blocks below the plan and
something kept for each trainable one. It returns the kept bytes at full depth, fully quantized,
per bits, and leaves the model's adapter as it found it.
"""

from __future__ import annotations

import math

import torch

from fedquad.client import LocalTrainConfig, QuantSettings, train_local
from fedquad.plan import ClientPlan


def train_every_plan(adapted, batch: dict[str, torch.Tensor], quantizer: str = "auto") -> dict[int, int]:
    L = adapted.num_blocks
    examples = int(batch["input_ids"].shape[0])
    global_state = adapted.adapter_state()
    config = LocalTrainConfig(local_steps=1, quant=QuantSettings(quantizer=quantizer))  # bits: the plan's
    full_kept = {}
    try:
        for bits in (8, 4):
            for depth in range(L + 1):
                for q in range(depth + 1):
                    plan = ClientPlan(depth, q, bits)
                    result = train_local(adapted, global_state, plan, [batch], config)
                    assert set(result.update) == set(adapted.keys_for_plan(plan)), plan
                    assert math.isfinite(result.metrics.loss) and result.metrics.examples == examples, plan
                    changed = [k for k, v in result.update.items() if not torch.equal(v, global_state[k])]
                    assert len(changed) == len(result.update), (plan, set(result.update) - set(changed))
                    kept = result.metrics.block_kept_bytes
                    assert all(kept[i] == 0 for i in range(L - depth)), plan
                    assert all(kept[i] > 0 for i in range(L - depth, L)), plan
                    if depth == q == L:
                        full_kept[bits] = sum(kept)
    finally:
        adapted.load_adapter_state(global_state)
    return full_kept
