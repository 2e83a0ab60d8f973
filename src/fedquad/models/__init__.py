"""Model loading and LoRA adaptation: presets, the block stack, PEFT adapters, task heads."""

from fedquad.models.adapted import AdaptedModel, LoraSettings, load_model
from fedquad.models.presets import PRESETS, preset_names

__all__ = ["AdaptedModel", "LoraSettings", "PRESETS", "load_model", "preset_names"]
