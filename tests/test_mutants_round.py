"""The round report's accounting on hand-checked numbers (issue 14, "tests that would not catch
real bugs"): `finish_round` straight from made-up outcomes, no training.

Mutants killed: `idle_s` summed over the successful clients instead of averaged (invisible with
one successful client or equal times); `bytes_down` counting the devices that sat out (they
download nothing). A client that failed after receiving its plan did download the adapter.
"""

from __future__ import annotations

import pytest
import torch

from _profiles import synthetic_profile
from fedquad.costmodel import profile_from_dict
from fedquad.devices import Device
from fedquad.sim.round import RoundState, begin_round, finish_round
from fedquad.strategies import ClientOutcome, RoundContext, get_strategy


def test_idle_time_is_the_mean_wait_and_sit_outs_download_nothing():
    profile = profile_from_dict(synthetic_profile(2))
    strategy = get_strategy("depth-only")
    ctx = RoundContext(0, profile, seed=1, lora_rank=8)
    big = 10 ** 12
    devices = [Device("a", "t", big, 1.0, 1e6, 1e6), Device("b", "t", big, 1.0, 1e6, 1e6),
               Device("c", "t", big, 1.0, 1e6, 1e6), Device("tiny", "t", 1, 1.0, 1e6, 1e6)]
    glob = {"head.weight": torch.full((2, 8), 0.5)}
    state = RoundState(0, 10.0, glob, strategy.init_state(2))
    plan = begin_round(strategy, ctx, state, devices)
    assert sorted(w.assignment.device_id for w in plan.work) == ["a", "b", "c"]  # "tiny" sits out

    def ok(device_id, time_s, value):
        a = next(w.assignment for w in plan.work if w.assignment.device_id == device_id)
        return ClientOutcome(a, "ok", update={"head.weight": torch.full((2, 8), value)}, examples=4, time_s=time_s)

    failed = next(w.assignment for w in plan.work if w.assignment.device_id == "c")
    outcomes = {"a": ok("a", 3.0, 0.6), "b": ok("b", 5.0, 0.7),
                "c": ClientOutcome(failed, "oom", "out of memory", time_s=1.0)}
    new_state, report = finish_round(strategy, state, plan, outcomes)
    assert report["round_time_s"] == 5.0 and report["clock_s"] == 15.0 and new_state.clock_s == 15.0
    assert report["idle_s"] == pytest.approx(1.0)  # ((5 - 3) + (5 - 5)) / 2 successful clients
    assert report["bytes_down"] == 3 * profile.adapter_bytes  # a, b and the failed c; not "tiny"
    assert report["bytes_up"] == 2 * 2 * 8 * 4  # the two accepted updates, float32
    assert (report["participants"], report["dropped"], report["sat_out"]) == (2, 2, 1)
