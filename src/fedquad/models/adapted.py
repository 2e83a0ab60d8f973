"""Load a transformers model, find its block stack, put PEFT LoRA on every block.

The *global adapter state* is a flat dict of every LoRA tensor of every block plus the task head
(keys = parameter names). A client loads all of it, trains the part its plan allows, and returns
only that part.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from fedquad.errors import FedquadError
from fedquad.models.presets import (DECODER_FAMILIES, FAMILY_HEAD_MODULES, FAMILY_LORA_TARGETS,
                                    PRESETS, minilm_path, preset_names)
from fedquad.plan import ClientPlan
from fedquad.tasks import KINDS, TaskKind, task_kind_named

TASKS = tuple(KINDS)  # the heads: "seq-cls", "causal-lm" (one task kind each, `fedquad.tasks`)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # short aliases


@dataclass(frozen=True)
class LoraSettings:
    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: tuple[str, ...] | None = field(
        default=None, metadata={"help": "module paths relative to one block; None = the family default"})

    def __post_init__(self) -> None:
        if self.rank <= 0 or self.alpha <= 0:
            raise FedquadError(f"LoRA rank and alpha must be positive, got r={self.rank} alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise FedquadError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


class AdaptedModel:
    """A PEFT-wrapped model plus what fedquad needs to know about it (blocks, adapter keys)."""

    def __init__(self, model: nn.Module, *, name: str, family: str, task: str, tokenizer=None):
        self.model = model
        self.name, self.family, self.task, self.tokenizer = name, family, task, tokenizer
        self.kind: TaskKind = task_kind_named(task)  # tokens, batches and metrics of this head's task
        self.blocks: list[nn.Module] = find_block_stack(model)
        self.num_blocks = len(self.blocks)
        block_names = {id(m): n for n, m in model.named_modules()}
        prefixes = [block_names[id(b)] + "." for b in self.blocks]
        # key -> block index, or None for tensors outside the blocks (the task head)
        self.key_block: dict[str, int | None] = {}
        for key, param in model.named_parameters():
            if "lora_" in key or "modules_to_save" in key:
                block = next((i for i, p in enumerate(prefixes) if key.startswith(p)), None)
                self.key_block[key] = block
        self.adapter_keys = sorted(self.key_block)
        peft_config = getattr(model, "peft_config", {}).get("default")
        self.lora_rank: int = peft_config.r if peft_config is not None else 0
        self._params = dict(model.named_parameters())
        self.device = next(model.parameters()).device

    # -- adapter state ---------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Every adapter tensor (a detached CPU clone, safe to keep across training)."""
        return {k: self._params[k].detach().to("cpu", copy=True) for k in self.adapter_keys}

    def adapter_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Expected key -> (shape, dtype), for validating updates."""
        return {k: (tuple(self._params[k].shape), self._params[k].dtype) for k in self.adapter_keys}

    @torch.no_grad()
    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        unknown = set(state) - set(self.key_block)
        if unknown:
            raise FedquadError(f"adapter state has keys this model does not: {sorted(unknown)[:3]}")
        for key, value in state.items():
            self._params[key].copy_(value)

    def keys_for_plan(self, plan: ClientPlan) -> list[str]:
        """Adapter keys a client with this plan trains: last `depth` blocks plus the head."""
        trainable = set(plan.trainable_blocks(self.num_blocks))
        return [k for k in self.adapter_keys if self.key_block[k] is None or self.key_block[k] in trainable]

    def block_adapter_bytes(self) -> tuple[list[int], int]:
        """Adapter bytes per block and of the head (what a client uploads for those tensors)."""
        per_block = [0] * self.num_blocks
        head = 0
        for k in self.adapter_keys:
            p = self._params[k]
            nbytes = p.numel() * p.element_size()
            if self.key_block[k] is None:
                head += nbytes
            else:
                per_block[self.key_block[k]] += nbytes
        return per_block, head

    def parameter(self, key: str) -> nn.Parameter:
        return self._params[key]


def find_block_stack(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, input side first: the longest ModuleList of identical modules.

    Works for BERT (encoder.layer), DistilBERT (transformer.layer), GPT-2 (h) and LLaMA-style
    (model.layers) without a per-family table.
    """
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and len(module) > 0:
                best = list(module)
    if not best:
        raise FedquadError(f"could not find a transformer block stack in {type(model).__name__}")
    return best


def _read_config(source: str):
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise FedquadError(f"cannot read a model from directory {source!r}: {str(exc).splitlines()[0]}") from None


def _resolve(name_or_path: str):
    """(display name, config, directory or None) for a preset name or a local directory."""
    from transformers import AutoConfig
    if name_or_path in PRESETS:
        preset = PRESETS[name_or_path]
        if preset.pretrained:
            path = minilm_path()
            return preset.name, _read_config(path), path
        return preset.name, AutoConfig.for_model(preset.family, **preset.config), None
    if os.path.isdir(name_or_path):
        return os.path.basename(os.path.normpath(name_or_path)), _read_config(name_or_path), name_or_path
    if os.path.exists(name_or_path):
        raise FedquadError(f"model path {name_or_path!r} is not a directory")
    raise FedquadError(f"unknown model {name_or_path!r}: not a preset ({', '.join(preset_names())}) "
                       "nor a local model directory")


def _load_tokenizer(path: str | None):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path or minilm_path())
    except (OSError, ValueError):  # a model directory without a tokenizer: fall back to MiniLM's
        return AutoTokenizer.from_pretrained(minilm_path())


def load_model(name_or_path: str = "minilm", *, task: str = "seq-cls", num_labels: int = 2,
               lora: LoraSettings = LoraSettings(), dtype: str = "float32", device: str | torch.device = "cpu",
               seed: int = 0, with_tokenizer: bool = True) -> AdaptedModel:
    """Build an AdaptedModel: base weights frozen, LoRA on every block, task head trainable."""
    import transformers

    kind = task_kind_named(task)  # unknown names: a one-line error listing the heads
    if dtype not in DTYPES:
        raise FedquadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if kind.has_classes and num_labels < 2:
        raise FedquadError(f"a classification task needs at least 2 labels, got {num_labels}")
    name, config, path = _resolve(name_or_path)
    family = config.model_type
    if family not in FAMILY_LORA_TARGETS:
        raise FedquadError(f"model family {family!r} is not supported; supported: {', '.join(sorted(FAMILY_LORA_TARGETS))}")
    if kind.needs_decoder and family not in DECODER_FAMILIES:
        raise FedquadError(f"{name} is a {family} encoder; causal-lm needs a decoder ({', '.join(DECODER_FAMILIES)})")

    transformers.logging.set_verbosity_error()  # "newly initialized head" notices are expected
    torch.manual_seed(seed)
    auto = getattr(transformers, kind.auto_model_class)
    if kind.has_classes:
        config.num_labels = num_labels
    if getattr(config, "pad_token_id", None) is None and family in DECODER_FAMILIES:
        config.pad_token_id = 0
    with _quiet_loading():
        return _build(auto, name, config, path, family, kind, lora, dtype, device, with_tokenizer)


@contextlib.contextmanager
def _quiet_loading():
    """Neither transformers' "Loading weights" bar (weights come from a local folder in a second)
    nor the FutureWarnings of pinned transformers/peft about each other's deprecated names (peft
    reads `is_gradient_checkpointing`) tell a fedquad user anything they can act on."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\.|$)")
            yield
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _build(auto, name, config, path, family, kind, lora, dtype, device, with_tokenizer) -> AdaptedModel:
    """The model of `load_model`, once its arguments are checked."""
    from peft import LoraConfig, get_peft_model

    try:
        if path:
            model = auto.from_pretrained(path, config=config)
        elif DTYPES[dtype] != torch.float32:  # random init straight in the target dtype: half the peak RAM at 1B
            model = auto.from_config(config, dtype=DTYPES[dtype])
        else:
            model = auto.from_config(config)
    except (OSError, ValueError) as exc:
        raise FedquadError(f"cannot load model weights for {name!r}: {str(exc).splitlines()[0]}") from None
    model.to(dtype=DTYPES[dtype])
    # Training never reads a KV cache, and one built during a training forward holds every block's
    # full-precision keys and values to the end of it, beside their quantized saved copies (memory
    # no profile counts). Greedy evaluation asks for a cache explicitly.
    if getattr(model.config, "use_cache", False):
        model.config.use_cache = False

    blocks = find_block_stack(model)
    names = {id(m): n for n, m in model.named_modules()}
    relative = lora.target_modules or FAMILY_LORA_TARGETS[family]
    targets = []
    for block in blocks:
        prefix = names[id(block)]
        inside = {n for n, _ in block.named_modules()}
        missing = [r for r in relative if r not in inside]
        if missing:
            raise FedquadError(f"LoRA target modules {missing} not found in a {family} block")
        targets += [f"{prefix}.{r}" for r in relative]
    peft_config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
        modules_to_save=list(FAMILY_HEAD_MODULES[family]) if kind.head_trains else None,
        fan_in_fan_out=(family == "gpt2"), bias="none")
    peft_model = get_peft_model(model, peft_config, autocast_adapter_dtype=False)
    peft_model.to(device)
    tokenizer = _load_tokenizer(path) if with_tokenizer else None
    return AdaptedModel(peft_model, name=name, family=family, task=kind.head, tokenizer=tokenizer)
