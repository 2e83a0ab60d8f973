"""Split a labelled data set over devices: Dirichlet non-IID over labels, or IID.

Dirichlet (Hsu et al. 2019, the usual FL benchmark split): for every class, the class's examples
are divided among devices in proportions drawn from Dir(alpha). Small alpha (0.1) gives each
device a few dominant classes; large alpha approaches IID. Every device gets at least
`min_examples`: the draw is repeated up to `max_redraws` times, then the remaining shortfall is
made up by moving examples from the largest devices (deterministic for the seed), so the result
always exists when there are enough examples and never loops forever.

All randomness comes from one `numpy.random.Generator` seeded with `seed`: the same labels,
config and seed give the same partition for every strategy in a comparison.

`holdout_split` sets a seeded, per-label share aside for evaluation (data without an eval split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fedquad.errors import FedquadError


@dataclass(frozen=True)
class PartitionConfig:
    num_devices: int = field(metadata={"help": "number of devices to split the data over"})
    alpha: float | None = field(default=0.5, metadata={
        "help": "Dirichlet concentration over labels (smaller = more skewed); None or inf = IID"})
    min_examples: int = field(default=1, metadata={"help": "fewest examples any device may get"})
    seed: int = field(default=0, metadata={"help": "seed of the numpy Generator"})
    max_redraws: int = field(default=100, metadata={"help": "Dirichlet re-draws before rebalancing"})

    def __post_init__(self) -> None:
        if not isinstance(self.num_devices, int) or self.num_devices < 1:
            raise FedquadError(f"num_devices must be a positive integer, got {self.num_devices!r}")
        if self.alpha is not None and not (self.alpha > 0):
            raise FedquadError(f"Dirichlet alpha must be > 0 (or None for IID), got {self.alpha!r}")
        if not isinstance(self.min_examples, int) or self.min_examples < 0:
            raise FedquadError(f"min_examples must be a non-negative integer, got {self.min_examples!r}")
        if self.max_redraws < 0:
            raise FedquadError(f"max_redraws must be >= 0, got {self.max_redraws}")

    @property
    def iid(self) -> bool:
        return self.alpha is None or math.isinf(self.alpha)


def partition(labels: Sequence[int] | np.ndarray, config: PartitionConfig) -> list[np.ndarray]:
    """Index arrays (sorted, int64), one per device; disjoint, and together they cover every example."""
    labels = np.asarray(labels, dtype=np.int64)
    n, d = len(labels), config.num_devices
    need = d * max(config.min_examples, 1)
    if n < need:
        raise FedquadError(f"cannot split {n} examples over {d} devices with at least "
                           f"{max(config.min_examples, 1)} each: need {need} or more examples")
    rng = np.random.default_rng(config.seed)
    if config.iid:
        return [np.sort(p) for p in np.array_split(rng.permutation(n), d)]
    return dirichlet_partition(labels, d, float(config.alpha), rng, config.min_examples, config.max_redraws)


def dirichlet_partition(labels: np.ndarray, num_devices: int, alpha: float, rng: np.random.Generator,
                        min_examples: int = 1, max_redraws: int = 100) -> list[np.ndarray]:
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    owner = np.zeros(len(labels), dtype=np.int64)
    for _ in range(max_redraws + 1):
        owner = _draw(by_class, len(labels), num_devices, alpha, rng)
        if np.bincount(owner, minlength=num_devices).min() >= min_examples:
            break
    # Group example indices by owner; a stable sort keeps each device's indices ascending.
    order = np.argsort(owner, kind="stable")
    parts = np.split(order, np.cumsum(np.bincount(owner, minlength=num_devices))[:-1])
    if min(len(p) for p in parts) >= min_examples:
        return parts
    return [np.sort(a) for a in _rebalance(parts, min_examples, rng)]


def _draw(by_class: list[np.ndarray], n: int, num_devices: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """The device of every example (vectorized: 10,000 devices x 100 re-draws stay fast)."""
    owner = np.empty(n, dtype=np.int64)
    for idx in by_class:
        props = rng.dirichlet(np.full(num_devices, alpha))
        # Very small alpha can underflow to all-zero/NaN proportions: fall back to one random device.
        if not np.all(np.isfinite(props)) or props.sum() <= 0:
            props = np.zeros(num_devices)
            props[rng.integers(num_devices)] = 1.0
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        counts = np.diff(np.concatenate([[0], cuts, [len(idx)]]))
        owner[idx] = np.repeat(np.arange(num_devices), counts)
    return owner


def _rebalance(parts: list[np.ndarray], min_examples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Move examples from the largest devices to those short of `min_examples`.

    Taking from the largest device (lowest index on ties) keeps the label skew of the small
    devices, which is what the Dirichlet draw was for; the moved example is chosen with the seeded
    generator, so the result is deterministic.
    """
    arrays = [rng.permutation(np.asarray(p, dtype=np.int64)) for p in parts]
    sizes = np.array([len(a) for a in arrays])
    for dev in np.flatnonzero(sizes < min_examples):
        while sizes[dev] < min_examples:
            donor = int(np.argmax(sizes))
            take = min(min_examples - int(sizes[dev]), int(sizes[donor]) - min_examples)
            moved, arrays[donor] = arrays[donor][:take], arrays[donor][take:]
            arrays[dev] = np.concatenate([arrays[dev], moved])
            sizes[donor] -= take
            sizes[dev] += take
    return arrays


def label_histograms(labels: Sequence[int] | np.ndarray, parts: Sequence[np.ndarray],
                     num_labels: int | None = None) -> np.ndarray:
    """Array [device, label] of example counts: what each device's local data looks like."""
    labels = np.asarray(labels, dtype=np.int64)
    k = num_labels if num_labels is not None else (int(labels.max()) + 1 if len(labels) else 0)
    return np.stack([np.bincount(labels[p], minlength=k) for p in parts]) if parts else np.zeros((0, k), np.int64)


def holdout_split(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices), both sorted: a seeded share `fraction` held out, per label.

    round(fraction x n) examples are held out (at least one), shared among the labels in proportion
    to their counts (largest remainders first), so a small file keeps its label mix on both sides;
    every label keeps at least one training example (a class never trained on cannot be scored).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0 < fraction < 1:
        raise FedquadError(f"held-out fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    classes, counts = np.unique(labels, return_counts=True)
    room = counts - 1  # what each label can spare
    if room.sum() < 1:
        raise FedquadError(f"cannot hold out evaluation examples from {len(labels)} example(s) whose labels all "
                           "differ: give an eval file instead")
    total = min(max(int(round(fraction * len(labels))), 1), int(room.sum()))
    quota = np.minimum(np.floor(fraction * counts).astype(np.int64), room)
    order = np.argsort(-(fraction * counts - np.floor(fraction * counts)), kind="stable")
    while quota.sum() < total:  # hand out the rest by largest remainder, skipping full labels
        for c in order:
            if quota.sum() < total and quota[c] < room[c]:
                quota[c] += 1
    rng = np.random.default_rng([seed, 0xE7A1])
    held = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)])
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
