"""Seeded fuzz of every strategy's merge (issue 13 item 9): malformed client updates never crash
an aggregation and never poison the global state.

Each round mixes well-formed updates with malformed ones of a known kind (sparse, meta, nested,
subclass, wrong shape/dtype, non-finite, huge, over the norm bound, absurd example counts of many
types, bad keys, non-mappings, unreadable mappings, a client's second update) and harmless
oddities that must still be accepted (non-contiguous, offset views, requires_grad, Parameters,
integral floats, numpy ints, empty or partial updates). Every strategy's `aggregate` must:
raise nothing; reject exactly the updates it should; return finite tensors of the global dtype
and shape, within the norm bound; and give bitwise the result it gives without the rejected ones.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction

import numpy as np
import torch

from fedquad.aggregation import AggregationConfig, aggregate_per_key, aggregate_ranked, norm_bound, tensor_norm
from fedquad.costmodel import profile_from_dict
from fedquad.plan import ClientPlan, TrainOptions
from fedquad.strategies import STRATEGIES, Assignment, ClientOutcome, RoundContext, get_strategy
from tests._profiles import synthetic_profile

SEED, ROUNDS = 13, 360
CTX = RoundContext(0, profile_from_dict(synthetic_profile(2)), seed=1, lora_rank=8)
CONFIG = AggregationConfig()


def global_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    return {
        "blocks.0.attn.lora_A.weight": 0.1 * torch.randn(8, 16, generator=g),
        "blocks.0.attn.lora_B.weight": torch.zeros(16, 8),  # LoRA B starts at zero
        "blocks.1.attn.lora_A.weight": 0.1 * torch.randn(8, 16, generator=g),
        "blocks.1.attn.lora_B.weight": 0.01 * torch.randn(16, 8, generator=g),
        "head.weight": 0.02 * torch.randn(2, 16, generator=g),
        "head.bias": torch.zeros(2),
        "norm.weight": torch.ones(16, dtype=torch.bfloat16),
    }


GLOBAL = global_state()
KEYS = list(GLOBAL)
FLOATS = [k for k in KEYS if GLOBAL[k].dtype == torch.float32]
MATRICES = [k for k in KEYS if GLOBAL[k].dim() == 2]


def legit(rng: random.Random, g: torch.Generator) -> dict[str, torch.Tensor]:
    """What a client could really send: a subset of keys, each moved a little from the global value."""
    keys = rng.sample(KEYS, rng.randint(1, len(KEYS)))
    return {k: (GLOBAL[k].float() + 0.01 * torch.randn(GLOBAL[k].shape, generator=g)).to(GLOBAL[k].dtype)
            for k in keys}


class _Sub(torch.Tensor):
    pass


class _Raising(torch.Tensor):
    """A subclass on which every torch call fails (even `.shape`)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError("no")


class _BrokenMapping(Mapping):
    def __getitem__(self, key):
        raise KeyError(key)

    def __iter__(self):
        raise RuntimeError("cannot iterate")

    def __len__(self):
        return 1


class _DoubledItems(dict):
    """A dict whose items() lists one key twice (it would be counted twice)."""

    def items(self):
        return list(super().items()) * 2


def _offset_view(t: torch.Tensor) -> torch.Tensor:
    base = torch.zeros(t.numel() + 7, dtype=t.dtype)
    base[7:] = t.reshape(-1)
    return base[7:].view(t.shape)


def _with(update: dict, key: str, value) -> dict:
    return {**update, key: value}


def _scaled(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = value
    return t


# kind -> (make(rng, g) -> (update, examples), accepted?)
def _reject_tensor_kinds():
    def key_of(rng, keys=FLOATS):
        return rng.choice(keys)

    def tensor_case(fn, keys=FLOATS):
        def make(rng, g):
            u = legit(rng, g)
            k = key_of(rng, keys)
            return _with(u, k, fn(u.get(k, GLOBAL[k]), rng)), rng.randint(1, 64)
        return make

    return {
        "sparse-coo": tensor_case(lambda t, r: t.to_sparse()),
        "sparse-csr": tensor_case(lambda t, r: t.to_sparse_csr(), MATRICES),
        "sparse-csc": tensor_case(lambda t, r: t.to_sparse_csc(), MATRICES),
        "meta": tensor_case(lambda t, r: torch.empty(t.shape, device="meta")),
        "nested": tensor_case(lambda t, r: torch.nested.nested_tensor([t])),
        "subclass": tensor_case(lambda t, r: t.as_subclass(_Sub)),
        "raising-subclass": tensor_case(lambda t, r: t.as_subclass(_Raising)),
        "transposed-shape": tensor_case(lambda t, r: t.t().contiguous(), MATRICES),
        "flattened": tensor_case(lambda t, r: t.reshape(-1), MATRICES),
        "extra-dim": tensor_case(lambda t, r: t.unsqueeze(0)),
        "scalar": tensor_case(lambda t, r: t.reshape(-1)[0].clone()),
        "truncated": tensor_case(lambda t, r: t.reshape(-1)[:-1].clone()),
        "wrong-dtype": tensor_case(lambda t, r: t.to(r.choice([torch.float64, torch.float16, torch.bfloat16,
                                                                torch.int64, torch.int32, torch.uint8, torch.bool,
                                                                torch.complex64, torch.int8]))),
        "nan": tensor_case(lambda t, r: _scaled(t, math.nan)),
        "inf": tensor_case(lambda t, r: _scaled(t, r.choice([math.inf, -math.inf]))),
        "huge-element": tensor_case(lambda t, r: _scaled(t, r.choice([1.0, -1.0]) * 10 ** r.uniform(30, 38.5))),
        "huge-max": tensor_case(lambda t, r: _scaled(t, float(torch.finfo(torch.float32).max))),
        "huge-everywhere": tensor_case(lambda t, r: torch.full(t.shape, 10 ** r.uniform(20, 38))),
        "bf16-huge": tensor_case(lambda t, r: _scaled(t, 1e30), ["norm.weight"]),
        "scaled-x1000": tensor_case(lambda t, r: (t + 0.1) * 1000),
        "over-floor": tensor_case(lambda t, r: torch.full(t.shape, 2.0), ["blocks.0.attn.lora_B.weight", "head.bias"]),
        "not-a-tensor": tensor_case(lambda t, r: r.choice([t.tolist(), t.numpy(), 1.0, None, "x"])),
    }


BAD_COUNTS = [0, -1, -7, 10**400, -10**400, 2**63, 2**64 - 1, 1e308, -1e308, math.nan, math.inf, -math.inf, 2.5,
              1e-300, "10", b"10", None, [16], (16,), {"n": 1}, True, False, np.bool_(True), np.float64(math.nan),
              np.float32(math.inf), np.int64(2**62), np.uint64(2**64 - 1), complex(10, 0), Decimal("10"),
              Fraction(5, 2), torch.tensor(5), 10**9 + 1, float(10**9 + 1), object()]
GOOD_COUNTS = [1, 16, 10**9, np.int64(12), np.int32(3), np.uint8(200), 10.0, np.float32(12.0), np.float64(7.0),
               Fraction(20, 2)]


def _reject_other_kinds():
    def count(c):
        return lambda rng, g: (legit(rng, g), c)

    kinds = {f"count-{i}": count(c) for i, c in enumerate(BAD_COUNTS)}
    kinds.update({
        "extra-key": lambda rng, g: (_with(legit(rng, g), "extra.key", torch.zeros(2)), 8),
        "int-key": lambda rng, g: (_with(legit(rng, g), 0, torch.zeros(2)), 8),
        "bytes-key": lambda rng, g: ({b"head.bias": torch.zeros(2)}, 8),
        "tuple-key": lambda rng, g: (_with(legit(rng, g), ("head.bias",), torch.zeros(2)), 8),
        "not-a-mapping": lambda rng, g: (rng.choice([None, [torch.zeros(2)], torch.zeros(2), "head.bias", 5,
                                                     {"head.bias"}, (("head.bias", torch.zeros(2)),)]), 8),
        "broken-mapping": lambda rng, g: (_BrokenMapping(), 8),
        "doubled-items": lambda rng, g: (_DoubledItems(legit(rng, g)), 8),
    })
    return kinds


def _accept_kinds():
    def tensor_case(fn, keys=KEYS):
        def make(rng, g):
            u = legit(rng, g)
            k = rng.choice(keys)
            return _with(u, k, fn(u.get(k, GLOBAL[k].clone()), rng)), rng.randint(1, 64)
        return make

    def count(c):
        return lambda rng, g: (legit(rng, g), c)

    kinds = {f"good-count-{i}": count(c) for i, c in enumerate(GOOD_COUNTS)}
    kinds.update({
        "non-contiguous": tensor_case(lambda t, r: t.t().contiguous().t(), MATRICES),
        "offset-view": tensor_case(lambda t, r: _offset_view(t)),
        "requires-grad": tensor_case(lambda t, r: t.clone().requires_grad_(True), FLOATS),
        "non-leaf": tensor_case(lambda t, r: t.clone().requires_grad_(True) * 1.0, FLOATS),
        "parameter": tensor_case(lambda t, r: torch.nn.Parameter(t.clone())),
        "expanded": tensor_case(lambda t, r: torch.full((1,) * t.dim(), 0.05, dtype=t.dtype).expand(t.shape)),
        "tiny": tensor_case(lambda t, r: torch.full(t.shape, r.choice([1e-38, 1e-45, -0.0, 0.0]), dtype=t.dtype)),
        "unchanged": lambda rng, g: ({k: GLOBAL[k].clone() for k in rng.sample(KEYS, 3)}, 5),
        "empty": lambda rng, g: ({}, 4),
        "ordered-dict": lambda rng, g: (dict(reversed(list(legit(rng, g).items()))), 9),
    })
    return kinds


REJECT = {**_reject_tensor_kinds(), **_reject_other_kinds()}
ACCEPT = _accept_kinds()


def _round(rng: random.Random, g: torch.Generator):
    """One round's entries: (update, examples, client id, expected valid on its own, kind)."""
    entries = []
    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.55:
            kind = rng.choice(sorted(REJECT))
            update, examples = REJECT[kind](rng, g)
            valid = False
        elif roll < 0.8:
            kind = rng.choice(sorted(ACCEPT))
            update, examples = ACCEPT[kind](rng, g)
            valid = True
        else:
            kind, update, examples, valid = "legit", legit(rng, g), rng.randint(1, 64), True
        entries.append([update, examples, f"c{rng.randint(0, 5)}", valid, kind])
    if rng.random() < 0.3:  # the same update sent again by the same client
        entries.append(list(rng.choice(entries)))
        entries[-1][4] = "repeat of " + entries[-1][4]
    return entries


def _expected_accepted(entries) -> list[int]:
    seen, out = set(), []
    for i, (_, _, cid, valid, _) in enumerate(entries):
        if valid and cid not in seen:
            seen.add(cid)
            out.append(i)
    return out


def _outcomes(entries, ranks):
    return [ClientOutcome(Assignment(cid, ClientPlan(2), options=TrainOptions(rank=rank)), "ok", update=update,
                          examples=examples) for (update, examples, cid, _, _), rank in zip(entries, ranks)]


def _check(name, new, report, entries, expected, redo):
    accepted = list(report.accepted)
    kinds = {i: e[4] for i, e in enumerate(entries)}
    assert accepted == expected, (name, [kinds[i] for i in set(accepted) ^ set(expected)], report.rejected)
    assert {r.index for r in report.rejected} == set(range(len(entries))) - set(expected), name
    assert list(new) == KEYS and report.unmerged_keys == (), name
    for k in KEYS:
        v = new[k]
        assert type(v) is torch.Tensor and v.dtype == GLOBAL[k].dtype and v.shape == GLOBAL[k].shape, (name, k)
        assert bool(torch.isfinite(v).all()), (name, k)
        held = [entries[i][0][k] for i in expected if k in entries[i][0]]
        if not held:
            assert v is GLOBAL[k], (name, k)
        else:  # a mean of bounded tensors (HetLoRA: row by row, with the old rows) stays bounded
            limit = math.sqrt(sum(tensor_norm(t) ** 2 for t in held) + tensor_norm(GLOBAL[k]) ** 2)
            assert tensor_norm(v) <= min(limit, len(held) * norm_bound(GLOBAL[k], CONFIG)) * 1.01, (name, k)
    for k, v in redo.items():  # without the rejected updates: bitwise the same
        assert torch.equal(v, new[k]) and v.dtype == new[k].dtype, (name, k)


def test_fuzzed_updates_never_crash_or_poison_any_strategy():
    rng, g = random.Random(SEED), torch.Generator().manual_seed(SEED)
    strategies = {name: get_strategy(name) for name in STRATEGIES}
    before = {k: v.clone() for k, v in GLOBAL.items()}
    malformed = rejected = 0
    kinds_seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prototype/beta warnings of nested and sparse tensors
        for r in range(ROUNDS):
            entries = _round(rng, g)
            malformed += sum(e[4] != "legit" for e in entries)
            kinds_seen.update(e[4] for e in entries)
            expected = _expected_accepted(entries)
            ranks = [rng.choice([8, 8, 4, 2]) for _ in entries]
            name = sorted(strategies)[r % len(strategies)]
            for name in {name, "hetlora"}:  # every strategy in turn, and HetLoRA's own merge every round
                s = strategies[name]
                new, report = s.aggregate(CTX, GLOBAL, _outcomes(entries, ranks), s.init_state(2))
                keep = [entries[i] for i in expected]
                redo, _ = s.aggregate(CTX, GLOBAL, _outcomes(keep, [ranks[i] for i in expected]), s.init_state(2))
                _check(name, new, report, entries, expected, redo)
            rejected += len(entries) - len(expected)
    assert malformed >= 1000 and rejected >= 800, (malformed, rejected)
    assert set(REJECT) | set(ACCEPT) <= kinds_seen, set(REJECT) | set(ACCEPT) - kinds_seen
    assert all(torch.equal(GLOBAL[k], before[k]) for k in KEYS)  # the input state is never written


def test_fuzzed_entries_of_the_merge_functions_themselves():
    """Entries a strategy never builds (not a pair, a bad rank) reach the functions directly."""
    rng, g = random.Random(SEED + 1), torch.Generator().manual_seed(SEED + 1)
    odd_entries = [None, (), ({},), "ab", {"head.bias": torch.zeros(2)}, ({}, 1, 2, 3), 5]
    bad_ranks = [0, -1, None, "8", 2.0, True, [8], math.nan]
    for _ in range(60):
        good = [(legit(rng, g), rng.randint(1, 64)) for _ in range(rng.randint(0, 3))]
        odd = rng.choice(odd_entries)
        mixed = good + [odd]
        rng.shuffle(mixed)
        new, report = aggregate_per_key(GLOBAL, mixed)
        alone, _ = aggregate_per_key(GLOBAL, [e for e in mixed if e is not odd])
        assert len(report.rejected) == 1 and all(torch.equal(new[k], alone[k]) for k in KEYS)
        ranked = [(u, n, 8) for u, n in good] + [(legit(rng, g), 3, rng.choice(bad_ranks))]
        new, report = aggregate_ranked(GLOBAL, ranked)
        alone, _ = aggregate_ranked(GLOBAL, ranked[:-1])
        assert [r.index for r in report.rejected] == [len(good)] and "rank" in report.rejected[0].reasons[0]
        assert all(torch.equal(new[k], alone[k]) for k in KEYS)
