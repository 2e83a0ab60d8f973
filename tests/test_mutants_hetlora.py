"""HetLoRA's merge and self-pruning on exact, hand-computable numbers (issue 14, "tests that would
not catch real bugs"). The older merge test checks the A rows only, with loose bounds; these
compare every element of A and B with a plain reference and use a non-zero global state.

Mutants killed: B columns weighted without the client's rank (its untrained columns pull the
mean towards zero); weights by example count only, without the update norm; the tail energy
taken from the first components instead of the last; the rank never lowered after a tail-light
update. (Components nobody trained keeping the global value: test_aggregation.py covers it.)
"""

from __future__ import annotations

import math

import pytest
import torch

from _profiles import synthetic_profile
from fedquad.aggregation import aggregate_ranked, tail_energy_share
from fedquad.costmodel import profile_from_dict
from fedquad.devices import Device
from fedquad.strategies import ClientOutcome, RoundContext, get_strategy

A, B = "m.lora_A.weight", "m.lora_B.weight"


def _client(rank: int, scale: float, shift: float) -> dict:
    """A rank-`rank` update of a rank-4 adapter (A 4 x 3, B 5 x 4): rows / columns past its rank are zero."""
    a = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10 * scale + shift
    b = torch.arange(20, dtype=torch.float32).reshape(5, 4) / 20 * scale + shift
    a[rank:] = 0
    b[:, rank:] = 0
    return {A: a, B: b}


def _reference(glob, clients):
    """Per component j: sum_i w_i x_i[j] / sum_i w_i over the clients with rank > j, where
    w_i = examples_i x ||B_i A_i||_F; components nobody trained keep the global value."""
    out = {}
    for key in (A, B):
        merged = glob[key].double().clone()
        for j in range(4):
            holders = [(u, n) for u, n, r in clients if r > j]
            if not holders:
                continue
            weights = [n * float(torch.linalg.norm(u[B].double() @ u[A].double())) for u, n in holders]
            rows = [u[key].double()[j] if key == A else u[key].double()[:, j] for u, _ in holders]
            value = sum(w * x for w, x in zip(weights, rows)) / sum(weights)
            if key == A:
                merged[j] = value
            else:
                merged[:, j] = value
        out[key] = merged.float()
    return out


def test_hetlora_merge_matches_the_reference_in_every_component():
    glob = {A: torch.full((4, 3), 0.7), B: torch.full((5, 4), 0.4)}  # non-zero: untrained parts must keep it
    clients = [(_client(4, 1.0, 0.1), 10, 4), (_client(2, 2.0, 0.3), 10, 2), (_client(3, 0.5, 0.2), 30, 3)]
    norms = [float(torch.linalg.norm(u[B] @ u[A])) for u, _, _ in clients]
    assert len({round(n, 3) for n in norms}) == 3  # distinct norms: norm weighting is visible
    new, report = aggregate_ranked(glob, clients)
    assert report.accepted == (0, 1, 2)
    expected = _reference(glob, clients)
    for key in (A, B):
        assert torch.allclose(new[key], expected[key], rtol=1e-6, atol=1e-7), key
    # only the rank-4 client trained component 3: A row 3 and B column 3 are its own values
    assert torch.allclose(new[A][3], clients[0][0][A][3]) and torch.allclose(new[B][:, 3], clients[0][0][B][:, 3])


def test_tail_energy_share_is_the_last_components_share():
    # component energies ||B[:, j]||^2 x ||A[j, :]||^2 = 1 x 1, 1 x 4, 4 x 1, 9 x 4
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[1.0, 1.0, 2.0, 3.0]])
    update = {A: a, B: b}
    assert tail_energy_share(update, 4, 1) == pytest.approx(36 / 45)
    assert tail_energy_share(update, 4, 2) == pytest.approx(40 / 45)
    assert tail_energy_share(update, 3, 1) == pytest.approx(4 / 9)  # rank 3: component 3 is not part of it
    assert math.isnan(tail_energy_share({A: torch.zeros(4, 2), B: torch.zeros(1, 4)}, 4, 1))


def test_hetlora_lowers_the_rank_after_a_tail_light_update():
    s = get_strategy("hetlora")
    ctx = RoundContext(0, profile_from_dict(synthetic_profile(2)), seed=1, lora_rank=4)
    dev = Device("d", "t", 10 ** 12, 1.0, 1e6, 1e6)
    first = s.configure(ctx, [dev], s.init_state(2))[0]
    assert first.options.rank == 4
    light = {A: torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.01, 0.0]]), B: torch.ones(3, 4)}
    heavy = {A: torch.ones(4, 2), B: torch.ones(3, 4)}
    assert tail_energy_share(light, 4, 1) < 0.05 < tail_energy_share(heavy, 4, 1)
    state = s.observe(ctx, [ClientOutcome(first, "ok", update=light, examples=4)], s.init_state(2))
    assert state["ranks"] == {"d": 3}
    assert s.configure(ctx, [dev], state)[0].options.rank == 3
    kept = s.observe(ctx, [ClientOutcome(first, "ok", update=heavy, examples=4)], s.init_state(2))
    assert kept["ranks"] == {}
