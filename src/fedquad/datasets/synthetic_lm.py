"""`synthetic-lm`: a generated causal-LM task whose answers can be checked exactly (no files needed).

Five kinds of short prompt, one category each (see `SyntheticLMConfig`); `generate_lm_split`
makes a split, `constant_answer_accuracy` is the floor a trained model must clearly beat.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from fedquad.datasets.causal import CausalLMData
from fedquad.errors import FedquadError

SYNTHETIC_LM_TASKS = ("add", "next", "max", "copy", "reverse")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class SyntheticLMConfig:
    """`synthetic-lm`: short prompts with one checkable answer each, one category per kind.

    * add      `add 3 5 =`        -> `8`       (operands 0..max_operand: a table to memorise)
    * next     `next f =`         -> `g`       (the letter after; 25 facts)
    * max      `max 3 8 5 =`      -> `8`       (largest of `list_len` digits: a rule over positions)
    * copy     `copy d k a =`     -> `d k a`   (`list_len` letters: needs attention to the prompt)
    * reverse  `reverse d k a =`  -> `a k d`
    """

    num_train: int = field(default=4000, metadata={"help": "training examples"})
    num_dev: int = field(default=500, metadata={"help": "dev (evaluation) examples"})
    tasks: tuple[str, ...] = field(default=SYNTHETIC_LM_TASKS, metadata={"help": "kinds of prompt, one category each"})
    max_operand: int = field(default=9, metadata={"help": "largest operand of `add` (and digit of `max`)"})
    list_len: int = field(default=3, metadata={"help": "items in `max`, `copy` and `reverse` prompts"})
    seed: int = field(default=0, metadata={"help": "generation seed; same seed, same data"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        unknown = [t for t in self.tasks if t not in SYNTHETIC_LM_TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise FedquadError(f"synthetic-lm tasks must be distinct names from {', '.join(SYNTHETIC_LM_TASKS)}, "
                               f"got {', '.join(self.tasks) or 'none'}")
        if self.num_train < 1 or self.num_dev < 0:
            raise FedquadError(f"synthetic-lm sizes must be positive, got train={self.num_train} dev={self.num_dev}")
        if not 1 <= self.max_operand <= 9:
            raise FedquadError(f"synthetic-lm max_operand must be 1..9, got {self.max_operand}")
        if not 1 <= self.list_len <= 8:
            raise FedquadError(f"synthetic-lm list_len must be 1..8, got {self.list_len}")


def _synthetic_example(rng: random.Random, kind: str, config: SyntheticLMConfig) -> tuple[str, str]:
    n = config.list_len
    if kind == "add":
        a, b = rng.randint(0, config.max_operand), rng.randint(0, config.max_operand)
        return f"add {a} {b} =", str(a + b)
    if kind == "next":
        i = rng.randrange(len(LETTERS) - 1)
        return f"next {LETTERS[i]} =", LETTERS[i + 1]
    if kind == "max":
        digits = [rng.randint(0, config.max_operand) for _ in range(n)]
        return f"max {' '.join(map(str, digits))} =", str(max(digits))
    letters = [rng.choice(LETTERS) for _ in range(n)]
    if kind == "copy":
        return f"copy {' '.join(letters)} =", " ".join(letters)
    return f"reverse {' '.join(letters)} =", " ".join(reversed(letters))


def generate_lm_split(config: SyntheticLMConfig, split: str, size: int | None = None) -> CausalLMData:
    """One split of `synthetic-lm`; categories are the prompt kinds, in `config.tasks` order.

    Each example draws its kind uniformly. Splits use independent streams (changing num_dev never
    changes the training set); the small fact tables (add, next) recur across splits by design.
    """
    if split not in ("train", "dev"):
        raise FedquadError(f"synthetic-lm task has splits train and dev, not {split!r}")
    n = size if size is not None else (config.num_train if split == "train" else config.num_dev)
    rng = random.Random(f"fedquad-synthetic-lm:{config.seed}:{','.join(config.tasks)}:{split}")
    prompts, responses, labels = [], [], []
    for _ in range(n):
        k = rng.randrange(len(config.tasks))
        p, r = _synthetic_example(rng, config.tasks[k], config)
        prompts.append(p)
        responses.append(r)
        labels.append(k)
    return CausalLMData(prompts=tuple(prompts), responses=tuple(responses), labels=np.asarray(labels, dtype=np.int64),
                        label_names=config.tasks, source=f"synthetic-lm(seed={config.seed}, split={split})")


def constant_answer_accuracy(data: CausalLMData) -> float:
    """Exact-match accuracy of the best constant answer per category (the category is visible in
    the prompt): the floor a model must clearly beat to have learned anything beyond the format."""
    best = 0
    for c in range(data.num_labels):
        answers = [r for r, lab in zip(data.responses, data.labels) if lab == c]
        if answers:
            best += max(answers.count(a) for a in set(answers))
    return best / max(len(data), 1)
