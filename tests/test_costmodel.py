"""Cost model and profile loading: hand-computed numbers, brute-force agreement, validation."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from _profiles import synthetic_profile, write_profile
from fedquad.costmodel import (SCHEMA_VERSION, cost_model, list_profiles, load_profile, memory_bytes,
                               profile_document, profile_from_dict, profile_to_dict, round_time_breakdown,
                               round_time_s, saved_bytes, step_time_s)
from fedquad.errors import FedquadError
from fedquad.plan import ClientPlan


def tiny() -> dict:
    """3 blocks with distinct numbers, so a wrong block shows up in the totals."""
    data = synthetic_profile(num_blocks=3, saved_bytes_per_block=[100, 200, 300], kept_ratio_8=[0.3, 0.3, 0.3],
                             kept_ratio_4=[0.2, 0.2, 1 / 6], adapter_bytes_per_block=[10, 20, 30],
                             forward_s=[1.0, 2.0, 3.0], backward_s=[4.0, 5.0, 6.0], quant_s_8=[0.1, 0.2, 0.3],
                             quant_s_4=[0.4, 0.5, 0.6], frozen_weight_bytes=1000, head_adapter_bytes=40,
                             workspace_bytes=7, head_saved_bytes=11)
    data["embedding_forward_s"] = 0.5
    data["head"].update(forward_s=0.25, backward_s=0.125)
    data["blocks"][2]["kept_bytes"]["4"] = 50
    data["blocks"][2]["kept_bytes_lowest"]["4"] = 50
    return data


@pytest.fixture
def profile():
    return profile_from_dict(tiny())


def test_hand_computed_memory(profile):
    assert profile.adapter_bytes == 100
    # trainable 1,2; block 1 int8 (60 kept), block 2 raw 300; optimizer 3 x (40 + 20 + 30)
    assert memory_bytes(profile, ClientPlan(2, 1, 8)) == 1000 + 100 + 270 + 11 + 60 + 300 + 7
    # top placement quantizes block 2 instead (int4: 50 kept)
    assert memory_bytes(profile, ClientPlan(2, 1, 4, "top")) == 1000 + 100 + 270 + 11 + 200 + 50 + 7
    assert memory_bytes(profile, ClientPlan(0)) == 1000 + 100 + 120 + 11 + 7
    assert memory_bytes(profile, ClientPlan(3, 3, 4)) == 1000 + 100 + 300 + 11 + 20 + 40 + 50 + 7
    assert cost_model(profile).full_footprint_bytes() == 1000 + 100 + 300 + 11 + 600 + 7


def test_hand_computed_times(profile):
    base = 0.5 + 6.0 + 0.25 + 0.125
    assert step_time_s(profile, ClientPlan(2, 1, 8)) == pytest.approx(base + 11 + 0.2)
    assert step_time_s(profile, ClientPlan(2, 1, 8), speed=2.0) == pytest.approx((base + 11.2) / 2)
    assert step_time_s(profile, ClientPlan(2, 1, 4, "top")) == pytest.approx(base + 11 + 0.6)
    assert step_time_s(profile, ClientPlan(0)) == pytest.approx(base)
    b = round_time_breakdown(profile, ClientPlan(2, 1, 8), speed=2.0, up_Bps=10.0, down_Bps=20.0, local_steps=4)
    assert b.compute_s == pytest.approx(4 * 9.0375)
    assert b.download_s == pytest.approx(5.0)  # whole adapter, 100 bytes at 20 B/s
    assert b.upload_s == pytest.approx(9.0)  # head 40 + blocks 20 + 30 at 10 B/s
    assert b.total_s == pytest.approx(50.15)
    assert round_time_s(profile, ClientPlan(2, 1, 8), 2.0, 10.0, 20.0, 4) == pytest.approx(50.15)
    assert b.to_dict()["total_s"] == pytest.approx(50.15)


def test_depth0_head_bytes(profile):
    data = tiny()
    data["head"]["saved_bytes_depth0"] = 5
    p = profile_from_dict(data)
    assert memory_bytes(p, ClientPlan(0)) == memory_bytes(profile, ClientPlan(0)) - 6
    assert memory_bytes(p, ClientPlan(1)) == memory_bytes(profile, ClientPlan(1))


def test_lowest_block_bytes(profile):
    """The lowest trainable block is charged its own (smaller) bytes, raw or quantized."""
    data = tiny()
    for b, low in zip(data["blocks"], (90, 150, 280)):
        b["saved_bytes_lowest"] = low
        b["kept_bytes_lowest"] = {"8": low // 4, "4": low // 8}
    p = profile_from_dict(data)
    # depth 2: block 1 lowest (150 instead of 200), block 2 ordinary
    assert saved_bytes(p, ClientPlan(2)) == 11 + 150 + 300
    # bottom q=1: block 1 quantized as the lowest block (150 // 4)
    assert saved_bytes(p, ClientPlan(2, 1, 8)) == 11 + 37 + 300
    # top q=1: block 2 quantized as an ordinary block (0.3 x 300), block 1 lowest and raw
    assert saved_bytes(p, ClientPlan(2, 1, 8, "top")) == 11 + 150 + 90
    assert saved_bytes(p, ClientPlan(2, 2, 4, "top")) == 11 + 18 + 50
    assert saved_bytes(p, ClientPlan(3)) == 11 + 90 + 200 + 300
    assert saved_bytes(p, ClientPlan(0)) == 11
    assert memory_bytes(p, ClientPlan(2)) == memory_bytes(profile, ClientPlan(2)) - 50


def brute_force(p, plan):
    """The cost model's formulas (docs/design.md, "Cost model"), block by block, from ClientPlan's own ranges."""
    L = p.num_blocks
    trainable, quantized = plan.trainable_blocks(L), plan.quantized_blocks(L)
    trained_adapter = p.head_adapter_bytes + sum(p.blocks[i].adapter_bytes for i in trainable)
    mem = (p.frozen_weight_bytes + p.adapter_bytes + p.workspace_bytes + p.head.saved_bytes
           + p.optimizer_bytes_per_trainable_byte * trained_adapter)
    lowest = L - plan.depth

    def block_bytes(i):
        b = p.blocks[i]
        if i in quantized:
            return (b.kept_bytes_lowest if i == lowest else b.kept_bytes)[plan.bits]
        return b.saved_bytes_lowest if i == lowest else b.saved_bytes

    mem += sum(block_bytes(i) for i in trainable)
    step = (p.embedding_forward_s + sum(b.forward_s for b in p.blocks) + p.head.forward_s + p.head.backward_s
            + sum(p.blocks[i].backward_s for i in trainable) + sum(p.blocks[i].quant_s[plan.bits] for i in quantized))
    return mem, step


@pytest.mark.parametrize("placement", ["bottom", "top"])
def test_prefix_sums_match_brute_force(placement):
    p = profile_from_dict(synthetic_profile(num_blocks=7, saved_bytes_per_block=[5, 70, 300, 11, 9000, 1, 44],
                                            lowest_saving=[1, 7, 30, 0, 900, 1, 4],
                                            forward_s=[0.1 * i for i in range(7)], backward_s=[0.3, 0, 1, 2, 3, 4, 5]))
    for d in range(8):
        for q in range(d + 1):
            for bits in (8, 4):
                plan = ClientPlan(d, q, bits, placement)
                mem, step = brute_force(p, plan)
                assert memory_bytes(p, plan) == pytest.approx(mem)
                assert step_time_s(p, plan) == pytest.approx(step)


def test_plan_deeper_than_model(profile):
    with pytest.raises(FedquadError, match="deeper"):
        memory_bytes(profile, ClientPlan(4))


def test_roundtrip(tmp_path, profile):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile_to_dict(profile)))
    assert load_profile(str(path)) == profile


def _broken(mutate):
    data = tiny()
    mutate(data)
    return data


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.pop("schema_version"), ["schema_version", "missing"]),
    (lambda d: d.update(schema_version=4), ["schema_version", "4", "versions 1, 2 and 3"]),
    (lambda d: d.update(schema_version="2"), ["schema_version", "'2'"]),
    (lambda d: d["blocks"][1].pop("saved_bytes_lowest"), ["blocks[1].saved_bytes_lowest", "missing"]),
    (lambda d: d["blocks"][0]["kept_bytes_lowest"].pop("8"), ["blocks[0].kept_bytes_lowest.8", "missing"]),
    (lambda d: d.pop("frozen_weight_bytes"), ["frozen_weight_bytes", "missing"]),
    (lambda d: d.update(adapter_bytes="big"), ["adapter_bytes", "integer"]),
    (lambda d: d.update(workspace_bytes=-1), ["workspace_bytes", ">= 0"]),
    (lambda d: d["blocks"][1].update(backward_s=-0.1), ["blocks[1].backward_s", "non-negative"]),
    (lambda d: d["blocks"][2]["kept_bytes"].pop("4"), ["blocks[2].kept_bytes.4", "missing"]),
    (lambda d: d["blocks"].pop(), ["blocks", "2 entries", "num_blocks is 3"]),
    (lambda d: d["blocks"][0].update(index=5), ["blocks[0].index"]),
    (lambda d: d.update(head=[]), ["head", "object"]),
    (lambda d: d.update(num_blocks=True), ["num_blocks", "integer"]),
    (lambda d: d.update(machine_gflops=0), ["machine_gflops", "positive"]),
])
def test_validation_names_field_and_file(tmp_path, mutate, words):
    path = write_profile(tmp_path, "bad.json", data=_broken(mutate))
    with pytest.raises(FedquadError) as exc:
        load_profile(path)
    message = str(exc.value)
    assert "\n" not in message and path in message
    for w in words:
        assert w in message


def test_unreadable_files(tmp_path):
    with pytest.raises(FedquadError, match="does not exist"):
        load_profile(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FedquadError, match="not valid JSON"):
        load_profile(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(FedquadError, match="JSON object"):
        load_profile(str(bad))


def test_extra_fields_ignored():
    data = copy.deepcopy(tiny())
    data["task"] = "seq-cls"
    data["measured_step_s"] = {"by_depth": [1, 2, 3, 4]}
    assert profile_from_dict(data) == profile_from_dict(tiny())


def test_version1_reads_with_ordinary_bytes_for_the_lowest_block():
    data = tiny()
    data["schema_version"] = 1
    for b in data["blocks"]:
        del b["saved_bytes_lowest"], b["kept_bytes_lowest"]
    p = profile_from_dict(data)
    assert [b.saved_bytes_lowest for b in p.blocks] == [100, 200, 300]
    assert p == profile_from_dict(tiny())  # tiny()'s lowest bytes equal the ordinary ones
    assert profile_to_dict(p)["schema_version"] == SCHEMA_VERSION == 3
    # the loader says what it filled in; a current file needed nothing
    assert len(p.upgraded) == 2 and "schema version 1 -> 2" in p.upgraded[0] and "lowest" in p.upgraded[0]
    assert "schema version 2 -> 3" in p.upgraded[1] and "workspace" in p.upgraded[1]
    assert profile_from_dict(tiny()).upgraded == ()
    assert data["schema_version"] == 1 and "saved_bytes_lowest" not in data["blocks"][0]  # input left as it was


COMMITTED_PROFILES = ["src/fedquad/resources/profiles/minilm-b16-s64.json",
                      "benchmarks/decoder_reference/profile.json"]  # the decoder reference's, measured 2026-12-02


@pytest.mark.parametrize("path", COMMITTED_PROFILES)
def test_committed_profiles_load_and_round_trip(path):
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent
    p = load_profile(str(root / path))
    data = json.loads((root / path).read_text())
    assert p.upgraded == () and data["schema_version"] == SCHEMA_VERSION
    assert p.num_blocks == len(p.blocks) > 0
    assert profile_from_dict(profile_to_dict(p)) == p
    # what the writers emit (profile_document) keeps the cost-model fields of the committed file
    doc = profile_document(p, task=data.get("task"), timing=data.get("timing"),
                           measured_step_s=data.get("measured_step_s"), step_peak=data.get("step_peak"))
    assert {k: doc[k] for k in data} == data


def test_profile_document_checks_what_it_writes(profile):
    doc = profile_document(profile, task="seq-cls", timing={"statistic": "median"})
    assert doc["task"] == "seq-cls" and doc["timing"] == {"statistic": "median"}
    assert profile_from_dict(doc) == profile
    assert "estimate" not in profile_document(profile, estimate=None)
    with pytest.raises(ValueError, match="tming"):
        profile_document(profile, tming={})
    negative = dataclasses.replace(profile, blocks=(dataclasses.replace(profile.blocks[0], backward_s=-1.0),
                                                    *profile.blocks[1:]))
    with pytest.raises(FedquadError, match=r"blocks\[0\]\.backward_s"):
        profile_document(negative)
    no_int4 = dataclasses.replace(profile, blocks=(dataclasses.replace(profile.blocks[0], kept_bytes={8: 30}),
                                                   *profile.blocks[1:]))
    with pytest.raises(FedquadError, match=r"blocks\[0\]\.kept_bytes\.4"):
        profile_document(no_int4)


def test_only_the_format_owner_writes_schema_version():
    """The profile has one writer: no other module spells the format's fields out by hand."""
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent
    writers = sorted(str(f.relative_to(root)) for folder in ("src", "benchmarks") for f in (root / folder).rglob("*.py")
                     if '"schema_version":' in f.read_text())
    assert writers == ["src/fedquad/costmodel/profile.py"]


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_deepest_fitting_is_the_deepest_plan_with_fewest_quantized_blocks(bits):
    """Against a brute force over every plan, at every budget at and just below a plan's memory, on
    a profile whose memory is not monotone in depth (block 2 saves 1000 more as the lowest
    trainable block: a hand-edited file can say so), so the deepest fit is not the first miss."""
    p = profile_from_dict(synthetic_profile(num_blocks=4, saved_bytes_per_block=[50, 400, 30, 90],
                                            lowest_saving=[0, 0, -1000, 0], adapter_bytes_per_block=[1, 2, 3, 4]))
    cm = cost_model(p)
    assert cm.costs(2, 0)[0] > cm.costs(3, 0)[0]  # the non-monotone step
    plans = [(d, q) for d in range(5) for q in (range(d + 1) if bits else [0])]
    memory = {(d, q): cm.costs(d, q, bits or 8)[0] for d, q in plans}
    for budget in sorted({m + dm for m in memory.values() for dm in (-1, 0)}):
        fitting = [(d, q) for (d, q), m in memory.items() if m <= budget]
        expected = min(fitting, key=lambda dq: (-dq[0], dq[1])) if fitting else None
        assert cm.deepest_fitting(budget, bits) == expected


def test_shipped_profile_by_name(tmp_path, monkeypatch):
    names = list_profiles()
    assert "minilm-b16-s64" in names
    p = load_profile("minilm-b16-s64")
    assert p.model == "minilm" and p.num_blocks == 6 and (p.batch_size, p.seq_len) == (16, 64)
    assert "resources/profiles/minilm-b16-s64.json" in p.source
    # a file of that name wins over the shipped profile
    monkeypatch.chdir(tmp_path)
    write_profile(tmp_path, "minilm-b16-s64", num_blocks=3)
    assert load_profile("minilm-b16-s64").num_blocks == 3
    with pytest.raises(FedquadError, match="minilm-b16-s64") as exc:
        load_profile("no-such-profile")
    assert "does not exist" in str(exc.value) and "\n" not in str(exc.value)


# -- the batch's shape (costmodel/shape.py) and the whole step's peak ---------------------------

def _with_lengths(fn) -> dict:
    """A profile at 16 x 64 plus lengths 32 and 128 whose every byte and time field is exactly
    fn(field at 64, s) for the synthetic base values."""
    data = tiny()
    base = copy.deepcopy(data)

    def at(s):
        blocks = []
        for b in base["blocks"]:
            nb = copy.deepcopy(b)
            for k in ("saved_bytes", "saved_bytes_lowest"):
                nb[k] = int(fn(b[k], s))
            for k in ("kept_bytes", "kept_bytes_lowest"):
                nb[k] = {bits: int(fn(v, s)) for bits, v in b[k].items()}
            nb["forward_s"], nb["backward_s"] = fn(b["forward_s"], s), fn(b["backward_s"], s)
            nb["quant_s"] = {bits: fn(v, s) for bits, v in b["quant_s"].items()}
            blocks.append(nb)
        head = {k: fn(v, s) if k.endswith("_s") else int(fn(v, s)) for k, v in base["head"].items()}
        return {"seq_len": s, "workspace_bytes": int(fn(base["workspace_bytes"], s)),
                "embedding_forward_s": fn(base["embedding_forward_s"], s), "head": head, "blocks": blocks}

    primary = at(64)
    data.update(workspace_bytes=primary["workspace_bytes"], embedding_forward_s=primary["embedding_forward_s"],
                head=primary["head"], blocks=primary["blocks"], lengths=[at(32), at(128)])
    return data


def test_shape_fit_recovers_linear_plus_quadratic_terms():
    """Fields made exactly a*s + b*s^2 per example (scaled so the value at 64 is the base): the
    profile at another shape is that function, times the batch size; memory follows."""
    from fedquad.costmodel import cost_model_at
    from fedquad.costmodel.shape import profile_at

    def fn(v, s):  # value at 64 is v; 1/3 of it linear, 2/3 quadratic in s
        return v * (s / 64 / 3 + 2 * (s / 64) ** 2 / 3) * 1024  # big, so integer rounding is negligible

    p = profile_from_dict(_with_lengths(fn))
    at = profile_at(p, 8, 96)
    base = tiny()
    for b, b0 in zip(at.blocks, base["blocks"]):  # batch 8 is half of 16
        assert b.saved_bytes == pytest.approx(fn(b0["saved_bytes"], 96) / 2, rel=1e-4)
        assert b.backward_s == pytest.approx(fn(b0["backward_s"], 96) / 2, rel=1e-9)
        assert b.kept_bytes[4] == pytest.approx(fn(b0["kept_bytes"]["4"], 96) / 2, rel=1e-4)
    assert at.workspace_bytes == pytest.approx(fn(base["workspace_bytes"], 96) / 2, rel=1e-4)
    # the profiled shape is the profile itself, and a shape's cost model is built once
    assert profile_at(p, 16, 64) is p and cost_model_at(p, 16, 64) is cost_model(p)
    assert cost_model_at(p, 8, 96) is cost_model_at(p, 8, 96)
    plan = ClientPlan(2, 1, 8)
    assert cost_model_at(p, 8, 96).memory_bytes(plan) == cost_model(profile_from_dict(profile_to_dict(at))).memory_bytes(plan)


def test_one_length_scales_with_tokens_and_quadratic_terms_grow_faster():
    from fedquad.costmodel import predict_step_peak_bytes
    from fedquad.costmodel.shape import fit_length_terms, profile_at
    p = profile_from_dict(tiny())
    at = profile_at(p, 32, 32)  # same tokens as 16 x 64
    assert [b.saved_bytes for b in at.blocks] == [b.saved_bytes for b in p.blocks]
    assert profile_at(p, 16, 128).blocks[2].saved_bytes == 2 * p.blocks[2].saved_bytes
    plan = ClientPlan(3, 1, 4)
    assert predict_step_peak_bytes(p, plan, 16, 64) == memory_bytes(p, plan)
    assert predict_step_peak_bytes(p, plan, 32, 64) > predict_step_peak_bytes(p, plan, 16, 64)
    # a purely quadratic field doubles its per-token cost when the length doubles
    a, b = fit_length_terms([32, 64, 128], [32 ** 2, 64 ** 2, 128 ** 2])
    assert a == pytest.approx(0, abs=1e-9) and b == pytest.approx(1.0)
    # noise that would make the quadratic term negative falls back to linear, never negative
    a, b = fit_length_terms([32, 64], [40.0, 64.0])
    assert a > 0 and b == 0.0


def test_step_peak_is_memory_above_the_resident_model_and_depth0_has_its_own_workspace():
    data = tiny()
    data["workspace_bytes_depth0"] = 3
    data["workspace_bytes_quantized"] = 9
    p = profile_from_dict(data)
    cm = cost_model(p)
    assert cm.memory_bytes(ClientPlan(0)) == 1000 + 100 + 120 + 11 + 3
    assert cm.memory_bytes(ClientPlan(2)) == 1000 + 100 + 270 + 11 + 500 + 7  # unquantized: workspace
    assert cm.memory_bytes(ClientPlan(2, 1, 8)) == 1000 + 100 + 270 + 11 + 60 + 300 + 9  # quantized: its own
    assert cm.step_peak_bytes(ClientPlan(2, 1, 8)) == 270 + 11 + 60 + 300 + 9
    assert profile_from_dict(profile_to_dict(p)) == p


def test_lengths_round_trip_and_bad_lengths_name_the_field():
    data = _with_lengths(lambda v, s: v * s / 64)
    p = profile_from_dict(data)
    assert [x.seq_len for x in p.lengths] == [32, 128]
    assert profile_from_dict(profile_to_dict(p)) == p
    bad = copy.deepcopy(data)
    bad["lengths"][0]["seq_len"] = 64
    with pytest.raises(FedquadError, match=r"lengths\[0\]\.seq_len"):
        profile_from_dict(bad)
    bad = copy.deepcopy(data)
    bad["lengths"][1]["blocks"][2]["saved_bytes"] = -1
    with pytest.raises(FedquadError, match=r"lengths\[1\]\.blocks\[2\]\.saved_bytes"):
        profile_from_dict(bad)
