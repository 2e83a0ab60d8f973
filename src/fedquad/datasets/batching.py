"""Tokenized data, its cache, and length-bucketed, padded batches of torch tensors.

Tokenizing SST-2 (67k rows) takes seconds and every simulated device, round and strategy reads
the same rows, so token ids are computed once per (tokenizer, max_len, data) and kept in memory
(and optionally in a safetensors file under a cache dir). They are stored ragged, as one flat
int32 array plus offsets, and padded only per batch. How a kind of task turns text into token
ids lives with that kind (`fedquad.tasks`); this module only holds and caches the result
(`cached_tokens`) and batches it.

Bucketing: the (shuffled) order is cut into chunks of `bucket_batches` batches, each chunk is
sorted by length and cut into batches, and the batch order is shuffled again. Batches then hold
similar lengths (little padding, so step time tracks the real sequence lengths) while the data
order stays random from epoch to epoch. `fixed_shape=True` pads every batch to `max_len`, for
profiling, where shapes must not vary.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from fedquad.errors import FedquadError

_MEMORY_CACHE: "OrderedDict[tuple, TokenizedData]" = OrderedDict()
_MEMORY_CACHE_ENTRIES = 8  # a few tasks x splits; bounded so long sessions do not grow without limit


@dataclass(frozen=True, eq=False)
class TokenizedData:
    """Ragged token ids: example i is `ids[offsets[i]:offsets[i+1]]`."""

    ids: np.ndarray = field(metadata={"help": "int32 token ids of all examples, concatenated"})
    offsets: np.ndarray = field(metadata={"help": "int64 start of each example in `ids`, plus the end"})
    labels: np.ndarray = field(metadata={"help": "int64 label per example"})
    token_type_ids: np.ndarray | None = field(metadata={"help": "int8 segment ids aligned with `ids`, or None"})
    pad_token_id: int = field(metadata={"help": "id used for padding"})
    max_len: int = field(metadata={"help": "tokens per example at most (truncation length)"})
    key: tuple = field(metadata={"help": "(tokenizer name_or_path, max_len, data fingerprint, class, vocab size)"})

    def __post_init__(self) -> None:
        for arr in (self.ids, self.offsets, self.labels, self.token_type_ids):
            if arr is not None:
                arr.setflags(write=False)  # one cached copy is shared by every device and round

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def collate(self, batch: np.ndarray, width: int) -> dict[str, torch.Tensor]:
        """Right-padded int64 `{input_ids, attention_mask, [token_type_ids], labels}` of `width`
        columns for the examples in `batch`, one label per example. A kind of task whose batches
        look different (causal LM: a label per token) overrides this."""
        n = len(batch)
        input_ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64) if self.token_type_ids is not None else None
        for row, i in enumerate(batch):
            a, b = self.offsets[i], self.offsets[i + 1]
            input_ids[row, :b - a] = self.ids[a:b]
            mask[row, :b - a] = 1
            if types is not None:
                types[row, :b - a] = self.token_type_ids[a:b]
        out = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if types is not None:
            out["token_type_ids"] = torch.from_numpy(types)
        out["labels"] = torch.from_numpy(self.labels[batch].astype(np.int64))
        return out


def _tokenizer_name(tokenizer) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def token_cache_key(tokenizer, max_len: int, data) -> tuple:
    """`data` is anything with a content `fingerprint` (every fedquad data type has one)."""
    # The vocabulary size and class guard against two different tokenizers saved at one path.
    return (_tokenizer_name(tokenizer), int(max_len), data.fingerprint, type(tokenizer).__name__, len(tokenizer))


def cached_tokens(data, tokenizer, max_len: int, make: Callable[[tuple], TokenizedData], *,
                  cache_dir: str | os.PathLike | None = None) -> TokenizedData:
    """The tokens of `data`: from the memory cache, else from `cache_dir` (when given), else
    `make(key)`, which tokenizes; the result is kept in memory and, with `cache_dir`, on disk.

    Only plain `TokenizedData` round-trips through the disk format: a kind whose tokens carry
    more (causal LM) passes no cache_dir."""
    if max_len < 4:
        raise FedquadError(f"max_len must be at least 4 tokens, got {max_len}")
    key = token_cache_key(tokenizer, max_len, data)
    if key in _MEMORY_CACHE:
        _MEMORY_CACHE.move_to_end(key)
        return _MEMORY_CACHE[key]
    path = None
    result = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
        path = os.path.join(os.fspath(cache_dir), f"tokens-{digest}.safetensors")
        result = _load_cached(path, key)
    if result is None:
        result = make(key)
        if path is not None:
            _save_cached(path, result)
    _MEMORY_CACHE[key] = result
    while len(_MEMORY_CACHE) > _MEMORY_CACHE_ENTRIES:
        _MEMORY_CACHE.popitem(last=False)
    return result


def clear_token_cache() -> None:
    _MEMORY_CACHE.clear()


def _save_cached(path: str, tok: TokenizedData) -> None:
    from safetensors.numpy import save_file
    arrays = {"ids": tok.ids, "offsets": tok.offsets, "labels": tok.labels}
    if tok.token_type_ids is not None:
        arrays["token_type_ids"] = tok.token_type_ids
    meta = {"key": json.dumps(tok.key), "pad_token_id": str(tok.pad_token_id), "max_len": str(tok.max_len)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Write then rename: a concurrent reader (another simulated process) never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_cached(path: str, key: tuple) -> TokenizedData | None:
    """The cached tokens, or None when absent, unreadable or made for another key (then re-tokenize)."""
    if not os.path.exists(path):
        return None
    from safetensors import safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("key") != json.dumps(key):
                return None
            arrays = {name: f.get_tensor(name) for name in f.keys()}
        return TokenizedData(ids=arrays["ids"], offsets=arrays["offsets"], labels=arrays["labels"],
                             token_type_ids=arrays.get("token_type_ids"), pad_token_id=int(meta["pad_token_id"]),
                             max_len=int(meta["max_len"]), key=key)
    except Exception:  # a truncated or foreign file is a cache miss, not an error
        return None


@dataclass(frozen=True)
class BatchConfig:
    batch_size: int = field(default=32, metadata={"help": "examples per batch"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle examples and batches (seeded, per epoch)"})
    seed: int = field(default=0, metadata={"help": "shuffling seed; combined with the epoch number"})
    bucket_batches: int = field(default=50, metadata={
        "help": "batches per length-sorting chunk; 1 = no bucketing, larger = less padding but less randomness"})
    fixed_shape: bool = field(default=False, metadata={"help": "pad every batch to max_len (profiling)"})
    drop_last: bool = field(default=False, metadata={"help": "skip a final batch smaller than batch_size"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise FedquadError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bucket_batches < 1:
            raise FedquadError(f"bucket_batches must be >= 1, got {self.bucket_batches}")


def count_batches(num_examples: int, config: BatchConfig) -> int:
    full, rest = divmod(num_examples, config.batch_size)
    return full + (1 if rest and not config.drop_last else 0)


def batch_order(lengths: np.ndarray, indices: np.ndarray, config: BatchConfig, epoch: int = 0) -> list[np.ndarray]:
    """The example indices of each batch, in iteration order (pure numpy, so tests can check it)."""
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(indices) if config.shuffle else np.asarray(indices)
    batches: list[np.ndarray] = []
    chunk = config.batch_size * config.bucket_batches
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        if config.bucket_batches > 1 and not config.fixed_shape:  # fixed shape pads anyway: keep the order
            part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + config.batch_size] for i in range(0, len(part), config.batch_size))
    if config.drop_last and batches and len(batches[-1]) < config.batch_size:
        batches.pop()  # only the overall last batch can be short: chunks are whole batches
    if config.shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def iterate_batches(tokens: TokenizedData, config: BatchConfig = BatchConfig(), *,
                    indices: Sequence[int] | np.ndarray | None = None, epoch: int = 0
                    ) -> Iterator[dict[str, torch.Tensor]]:
    """Batches `{input_ids, attention_mask, [token_type_ids], labels}` over `indices` (default: all)."""
    idx = np.arange(len(tokens)) if indices is None else np.asarray(indices, dtype=np.int64)
    lengths = tokens.lengths
    for batch in batch_order(lengths, idx, config, epoch):
        yield collate(tokens, batch, tokens.max_len if config.fixed_shape else int(lengths[batch].max()))


def collate(tokens: TokenizedData, batch: np.ndarray, width: int) -> dict[str, torch.Tensor]:
    """The batch of the examples in `batch`, padded to `width` columns, as `tokens`' kind lays it out."""
    return tokens.collate(batch, width)
