"""Arguments and output helpers shared by several commands."""

from __future__ import annotations

import json
import sys

from fedquad.cli.main import positive_int, seed_int
from fedquad.plan import DEFAULT_GROUP_SIZE


def add_model_args(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="minilm", help="preset name (minilm, tiny-bert, tiny-llama, ...) or a local model directory")
    g.add_argument("--task", default=None, choices=["seq-cls", "causal-lm"],
                   help="task head (default: seq-cls for encoders, causal-lm for decoders)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "fp32", "bf16"],
                   help="compute dtype (bf16 = bfloat16, fp32 = float32)")
    g.add_argument("--lora-rank", type=positive_int, default=8, help="LoRA rank")
    g.add_argument("--lora-alpha", type=positive_int, default=16, help="LoRA alpha")
    g.add_argument("--batch-size", type=positive_int, default=16, help="examples per step")
    g.add_argument("--seq-len", type=positive_int, default=64, help="tokens per example")
    g.add_argument("--group-size", type=positive_int, default=DEFAULT_GROUP_SIZE,
                   help=f"quantization group size (default {DEFAULT_GROUP_SIZE}, as every entry point)")
    g.add_argument("--quantizer", default="auto", choices=["auto", "fast", "reference"], help="quantizer implementation")
    g.add_argument("--seed", type=seed_int, default=0, help="random seed (0 to 2**63 - 1)")


def load_from_args(args):
    """Build the AdaptedModel the arguments name (imports torch lazily: --help stays fast)."""
    from fedquad.diagnostics.memory import pick_device
    from fedquad.models import LoraSettings, load_model
    from fedquad.models.presets import DECODER_FAMILIES, PRESETS

    task = args.task
    if task is None:
        preset = PRESETS.get(args.model)
        task = "causal-lm" if preset is not None and preset.family in DECODER_FAMILIES else "seq-cls"
    device = pick_device(args.device)
    return load_model(args.model, task=task, lora=LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha),
                      dtype=args.dtype, device=device, seed=args.seed, with_tokenizer=False)


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.2f}"
