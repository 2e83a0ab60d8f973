"""The profile format: the measured inputs of the cost model (docs/design.md, "Cost model").

This module is the one owner of the JSON format that `fedquad profile` writes (measured,
diagnostics/profile.py), that `costmodel.llm_estimate` writes (from a decoder config) and that
the tests' synthetic profiles use: the dataclasses, the current schema version, the upgrade of
older versions, validation (`profile_from_dict`) and serialisation (`profile_to_dict`, and
`profile_document` for a writer that adds its information sections). A writer builds a Profile
and serialises it here; it never writes the fields by hand.

Versions: 2 adds, per block, the bytes it saves as the lowest trainable block
(`saved_bytes_lowest`, `kept_bytes_lowest`). A version-1 file is upgraded on reading, with those
equal to the ordinary per-block bytes (which can over-state a plan by the part of one block's
input that needs no gradient); `Profile.upgraded` says so. 3 makes `workspace_bytes` the
*measured* transient of the whole step (its peak minus saved activations, gradients and
optimizer state; `workspace_bytes_depth0` the same at depth 0), and adds `lengths`: the
shape-dependent fields measured again at other sequence lengths (same batch size), from which
costmodel/shape.py fits per-block terms linear and quadratic in the length. A version-2 file
reads with no extra lengths (bytes and times then scale with the batch's tokens) and its
workspace estimate (one block's saved activations) standing in for the measured one. Every problem with a file is a
FedquadError whose one-line message names the file and the field, because the profile is
hand-editable and the planner's answers are only as good as these numbers.

Recompute (optional per-block fields, no version change): `input_bytes` and `input_kept_bytes`
are what a block stores when it runs under activation checkpointing (its input, at full precision
or quantized). A file without them reads as before; its cost model then has no recompute plans
(`Profile.supports_recompute` is False) and says so when asked for one.

Shipped profiles (resources/profiles/NAME.json) can be named instead of given by path.
Pure Python: no torch.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fedquad.errors import FedquadError

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
PROFILE_DIR = "resources/profiles"
PROFILE_BITS = (8, 4)
ADAMW_STATE_FACTOR = 3.0  # gradient + exp_avg + exp_avg_sq per trainable byte (AdamW, fp32 state)
# Sections a writer may add beside the cost-model fields: kept in the file for people and tools
# (what was measured and how), ignored by the cost model. Anything else is a typo or a new field.
INFO_SECTIONS = ("task", "measured_step_s", "timing", "estimate", "step_peak")


@dataclass(frozen=True)
class BlockProfile:
    index: int = field(metadata={"help": "block index, 0 = nearest the input"})
    saved_bytes: int = field(metadata={"help": "bytes of saved activations when the block is trainable (exact)"})
    kept_bytes: dict[int, int] = field(metadata={"help": "bits -> bytes kept when its saved activations are quantized"})
    adapter_bytes: int = field(metadata={"help": "bytes of this block's LoRA tensors (what a trainer uploads)"})
    forward_s: float = field(metadata={"help": "forward time of the block on the profiling machine"})
    backward_s: float = field(metadata={"help": "extra time when the block is trainable (backward + optimizer)"})
    quant_s: dict[int, float] = field(metadata={"help": "bits -> extra time of quantizing+dequantizing this block"})
    saved_bytes_lowest: int | None = field(default=None, metadata={
        "help": "saved bytes when this is the lowest trainable block (its input needs no grad); "
                "None = saved_bytes"})
    kept_bytes_lowest: dict[int, int] | None = field(default=None, metadata={
        "help": "bits -> kept bytes when this is the lowest trainable block and quantized; None = kept_bytes"})
    input_bytes: int | None = field(default=None, metadata={
        "help": "recompute: bytes stored when the block is checkpointed (its inputs, exact); None = not measured"})
    input_kept_bytes: dict[int, int] | None = field(default=None, metadata={
        "help": "recompute: bits -> bytes stored when checkpointed with a quantized input; None = not measured"})

    def __post_init__(self) -> None:
        if self.saved_bytes_lowest is None:
            object.__setattr__(self, "saved_bytes_lowest", self.saved_bytes)
        if self.kept_bytes_lowest is None:
            object.__setattr__(self, "kept_bytes_lowest", dict(self.kept_bytes))


@dataclass(frozen=True)
class HeadProfile:
    saved_bytes: int = field(metadata={"help": "saved bytes outside the blocks (embedding output, head) in training"})
    forward_s: float = field(metadata={"help": "head forward time (plus everything outside the blocks)"})
    backward_s: float = field(metadata={"help": "head backward time"})
    saved_bytes_depth0: int | None = field(default=None, metadata={
        "help": "saved bytes outside the blocks at depth 0 when measured separately (optional)"})


@dataclass(frozen=True)
class LengthPoint:
    """The shape-dependent fields of a profile measured at another sequence length (same batch size)."""
    seq_len: int = field(metadata={"help": "tokens per example of this measurement"})
    workspace_bytes: int = field(metadata={"help": "measured step transient at this length (see Profile)"})
    embedding_forward_s: float = field(metadata={"help": "embedding forward time at this length"})
    head: HeadProfile = field(metadata={"help": "what lies outside the blocks, at this length"})
    blocks: tuple[BlockProfile, ...] = field(metadata={"help": "per-block measurements at this length"})
    workspace_bytes_depth0: int | None = field(default=None, metadata={
        "help": "measured step transient at depth 0 at this length; None = workspace_bytes"})
    workspace_bytes_quantized: int | None = field(default=None, metadata={
        "help": "measured step transient of plans with quantized blocks at this length; None = workspace_bytes"})


@dataclass(frozen=True)
class Profile:
    model: str = field(metadata={"help": "model preset name"})
    family: str = field(metadata={"help": "architecture family (bert, llama, ...)"})
    num_blocks: int = field(metadata={"help": "transformer blocks L"})
    batch_size: int = field(metadata={"help": "examples per step the profile was measured at"})
    seq_len: int = field(metadata={"help": "tokens per example the profile was measured at"})
    dtype: str = field(metadata={"help": "compute dtype"})
    device: str = field(metadata={"help": "device type of the profiling machine (cpu, cuda)"})
    group_size: int = field(metadata={"help": "quantization group size"})
    machine_gflops: float = field(metadata={"help": "measured matmul throughput of the profiling machine (speed 1.0)"})
    frozen_weight_bytes: int = field(metadata={"help": "bytes of frozen base-model parameters"})
    adapter_bytes: int = field(metadata={"help": "bytes of the whole global adapter = download size"})
    head_adapter_bytes: int = field(metadata={"help": "bytes trainable at every depth (task head)"})
    optimizer_bytes_per_trainable_byte: float = field(metadata={"help": "gradient + optimizer state per byte"})
    workspace_bytes: int = field(metadata={
        "help": "the step's transient peak beyond saved activations, gradients and optimizer state (measured "
                "since schema 3: logits and their fp32 copies and gradients, no_grad attention scores, workspace)"})
    embedding_forward_s: float = field(metadata={"help": "embedding forward time"})
    head: HeadProfile = field(metadata={"help": "what lies outside the blocks"})
    blocks: tuple[BlockProfile, ...] = field(metadata={"help": "per-block measurements, index order"})
    kept_ratio: dict[int, float] = field(default_factory=dict, metadata={"help": "kept/raw ratio per bits (info)"})
    workspace_bytes_depth0: int | None = field(default=None, metadata={
        "help": "the step's transient at depth 0 (nothing trains but the head); None = workspace_bytes"})
    workspace_bytes_quantized: int | None = field(default=None, metadata={
        "help": "the step's transient when blocks are quantized (backward dequantizes a block's activations "
                "while it runs); None = workspace_bytes"})
    lengths: tuple[LengthPoint, ...] = field(default=(), metadata={
        "help": "the shape-dependent fields at other sequence lengths (schema 3); empty = scale with tokens"})
    source: str = field(default="<dict>", compare=False, metadata={"help": "where the profile came from (messages)"})
    upgraded: tuple[str, ...] = field(default=(), compare=False, metadata={
        "help": "what reading an older schema version filled in, one line each (empty: read as written)"})

    @property
    def supports_recompute(self) -> bool:
        """Every block has its checkpointed (recompute) bytes: the cost model can price recompute plans."""
        return all(b.input_bytes is not None and b.input_kept_bytes is not None for b in self.blocks)


def list_profiles() -> list[str]:
    """Names of the profiles shipped with fedquad (usable wherever a profile path is)."""
    folder = resources.files("fedquad").joinpath(PROFILE_DIR)
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(path: str) -> Profile:
    """Read and validate a profile: a JSON file by path, or a shipped profile by name (a file of
    that name takes precedence)."""
    if not os.path.exists(path) and path in list_profiles():
        source = f"{PROFILE_DIR}/{path}.json"
        text = resources.files("fedquad").joinpath(source).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FedquadError(f"shipped profile {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return profile_from_dict(data, source=source)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        shipped = list_profiles()
        names = f" (shipped profiles: {', '.join(shipped)})" if shipped else ""
        raise FedquadError(f"profile {path} does not exist, as a file or a shipped profile name{names}") from None
    except IsADirectoryError:
        raise FedquadError(f"profile {path} is a directory, not a JSON file") from None
    except json.JSONDecodeError as exc:
        raise FedquadError(f"profile {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FedquadError(f"cannot read profile {path}: {exc}") from None
    return profile_from_dict(data, source=path)


def upgrade_profile_dict(data: dict, source: str = "<dict>") -> tuple[dict, tuple[str, ...]]:
    """`data` at the current schema version (a copy when anything changed) and one line per step
    of the upgrade; an unreadable version is a FedquadError that names the file."""
    r = _Reader(source)
    version = data.get("schema_version")
    if version is None:
        r.fail("schema_version", f"is missing (expected {SCHEMA_VERSION})")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        readable = ", ".join(str(v) for v in READABLE_VERSIONS[:-1]) + f" and {READABLE_VERSIONS[-1]}"
        r.fail("schema_version",
               f"is {version!r}, this fedquad reads versions {readable}; re-run `fedquad profile`")
    notes = []
    while version != SCHEMA_VERSION:
        data, note = _UPGRADES[version](copy.deepcopy(data), r)
        version = data["schema_version"]
        notes.append(note)
    return data, tuple(notes)


def _v1_to_v2(data: dict, r: "_Reader") -> tuple[dict, str]:
    blocks = r.get(data, "blocks")
    for i, b in enumerate(blocks if isinstance(blocks, list) else []):
        if isinstance(b, dict):  # anything else fails validation with its own message
            b.setdefault("saved_bytes_lowest", b.get("saved_bytes"))
            kept = b.get("kept_bytes")
            b.setdefault("kept_bytes_lowest", dict(kept) if isinstance(kept, dict) else kept)
    data["schema_version"] = 2
    return data, ("schema version 1 -> 2: no lowest-trainable-block bytes, the ordinary per-block bytes stand "
                  "in for them (a plan's memory may be over-stated by part of one block's input)")


def _v2_to_v3(data: dict, r: "_Reader") -> tuple[dict, str]:
    data.setdefault("lengths", [])
    data["schema_version"] = 3
    return data, ("schema version 2 -> 3: workspace_bytes is the old estimate (one block's saved activations), "
                  "not the measured step transient, and there is one sequence length only (bytes and times "
                  "scale with the batch's tokens); re-run `fedquad profile` for both")


_UPGRADES = {1: _v1_to_v2, 2: _v2_to_v3}


def profile_from_dict(data: Any, source: str = "<dict>") -> Profile:
    """Validate a profile dict (as `fedquad profile` writes it), upgrading an older schema version.
    Information sections and unknown fields are ignored."""
    r = _Reader(source)
    if not isinstance(data, dict):
        r.fail("", f"must be a JSON object, got {type(data).__name__}")
    data, upgraded = upgrade_profile_dict(data, source)
    num_blocks = r.integer(data, "num_blocks", minimum=1)
    blocks_data = r.get(data, "blocks")
    if not isinstance(blocks_data, list):
        r.fail("blocks", f"must be a list, got {type(blocks_data).__name__}")
    if len(blocks_data) != num_blocks:
        r.fail("blocks", f"has {len(blocks_data)} entries but num_blocks is {num_blocks}")
    blocks = tuple(_block(r, b, i) for i, b in enumerate(blocks_data))
    head = _head(r, r.obj(data, "head"), "head.")
    kept_ratio = data.get("kept_ratio") or {}
    if not isinstance(kept_ratio, dict):
        r.fail("kept_ratio", f"must be an object, got {type(kept_ratio).__name__}")
    machine_gflops = r.number(data, "machine_gflops")
    if machine_gflops <= 0:
        r.fail("machine_gflops", f"must be positive, got {machine_gflops}")
    return Profile(
        model=r.text(data, "model"), family=r.text(data, "family"), num_blocks=num_blocks,
        batch_size=r.integer(data, "batch_size", minimum=1), seq_len=r.integer(data, "seq_len", minimum=1),
        dtype=r.text(data, "dtype"), device=r.text(data, "device"), group_size=r.integer(data, "group_size", minimum=1),
        machine_gflops=machine_gflops,
        frozen_weight_bytes=r.integer(data, "frozen_weight_bytes"), adapter_bytes=r.integer(data, "adapter_bytes"),
        head_adapter_bytes=r.integer(data, "head_adapter_bytes"),
        optimizer_bytes_per_trainable_byte=r.number(data, "optimizer_bytes_per_trainable_byte"),
        workspace_bytes=r.integer(data, "workspace_bytes"), embedding_forward_s=r.number(data, "embedding_forward_s"),
        head=head, blocks=blocks,
        kept_ratio={int(k): r.number(kept_ratio, k, "kept_ratio.") for k in kept_ratio if k in ("8", "4")},
        workspace_bytes_depth0=_optional_int(r, data, "workspace_bytes_depth0", ""),
        workspace_bytes_quantized=_optional_int(r, data, "workspace_bytes_quantized", ""),
        lengths=_lengths(r, data, num_blocks, r.integer(data, "seq_len", minimum=1)),
        source=source, upgraded=upgraded,
    )


def _optional_int(r: "_Reader", data: dict, key: str, prefix: str) -> int | None:
    return None if data.get(key) is None else r.integer(data, key, prefix)


def _head(r: "_Reader", head: dict, prefix: str) -> HeadProfile:
    return HeadProfile(saved_bytes=r.integer(head, "saved_bytes", prefix), forward_s=r.number(head, "forward_s", prefix),
                       backward_s=r.number(head, "backward_s", prefix),
                       saved_bytes_depth0=_optional_int(r, head, "saved_bytes_depth0", prefix))


def _lengths(r: "_Reader", data: dict, num_blocks: int, seq_len: int) -> tuple[LengthPoint, ...]:
    items = r.get(data, "lengths")
    if not isinstance(items, list):
        r.fail("lengths", f"must be a list, got {type(items).__name__}")
    out, seen = [], {seq_len}
    for k, item in enumerate(items):
        prefix = f"lengths[{k}]."
        if not isinstance(item, dict):
            r.fail(f"lengths[{k}]", f"must be an object, got {type(item).__name__}")
        s = r.integer(item, "seq_len", prefix, minimum=1)
        if s in seen:
            r.fail(f"{prefix}seq_len", f"is {s}, a length the profile already has")
        seen.add(s)
        blocks = r.get(item, "blocks", prefix)
        if not isinstance(blocks, list) or len(blocks) != num_blocks:
            r.fail(f"{prefix}blocks", f"must list {num_blocks} blocks")
        out.append(LengthPoint(
            seq_len=s, workspace_bytes=r.integer(item, "workspace_bytes", prefix),
            workspace_bytes_depth0=_optional_int(r, item, "workspace_bytes_depth0", prefix),
            workspace_bytes_quantized=_optional_int(r, item, "workspace_bytes_quantized", prefix),
            embedding_forward_s=r.number(item, "embedding_forward_s", prefix),
            head=_head(r, r.obj(item, "head", prefix), f"{prefix}head."),
            blocks=tuple(_block(r, b, i, prefix) for i, b in enumerate(blocks))))
    return tuple(sorted(out, key=lambda p: p.seq_len))


def _head_dict(h: HeadProfile) -> dict:
    head = {"saved_bytes": h.saved_bytes, "forward_s": h.forward_s, "backward_s": h.backward_s}
    if h.saved_bytes_depth0 is not None:
        head["saved_bytes_depth0"] = h.saved_bytes_depth0
    return head


def _blocks_list(blocks) -> list:
    return [{"index": b.index, "saved_bytes": b.saved_bytes,
             "kept_bytes": {str(k): v for k, v in b.kept_bytes.items()},
             "saved_bytes_lowest": b.saved_bytes_lowest,
             "kept_bytes_lowest": {str(k): v for k, v in b.kept_bytes_lowest.items()},
             "adapter_bytes": b.adapter_bytes,
             "forward_s": b.forward_s, "backward_s": b.backward_s,
             "quant_s": {str(k): v for k, v in b.quant_s.items()}, **_recompute_fields(b)} for b in blocks]


def _length_dict(p: LengthPoint) -> dict:
    out = {"seq_len": p.seq_len, "workspace_bytes": p.workspace_bytes}
    for key in ("workspace_bytes_depth0", "workspace_bytes_quantized"):
        if getattr(p, key) is not None:
            out[key] = getattr(p, key)
    out.update(embedding_forward_s=p.embedding_forward_s, head=_head_dict(p.head), blocks=_blocks_list(p.blocks))
    return out


def profile_to_dict(profile: Profile) -> dict:
    """The JSON form (current schema version); profile_from_dict(profile_to_dict(p)) == p."""
    head = _head_dict(profile.head)
    extra = {key: getattr(profile, key) for key in ("workspace_bytes_depth0", "workspace_bytes_quantized")
             if getattr(profile, key) is not None}
    return {
        "schema_version": SCHEMA_VERSION, "model": profile.model, "family": profile.family,
        "num_blocks": profile.num_blocks, "batch_size": profile.batch_size, "seq_len": profile.seq_len,
        "dtype": profile.dtype, "device": profile.device, "group_size": profile.group_size,
        "machine_gflops": profile.machine_gflops, "frozen_weight_bytes": profile.frozen_weight_bytes,
        "adapter_bytes": profile.adapter_bytes, "head_adapter_bytes": profile.head_adapter_bytes,
        "optimizer_bytes_per_trainable_byte": profile.optimizer_bytes_per_trainable_byte,
        "workspace_bytes": profile.workspace_bytes, **extra, "embedding_forward_s": profile.embedding_forward_s,
        "head": head, "kept_ratio": {str(k): v for k, v in profile.kept_ratio.items()},
        "blocks": _blocks_list(profile.blocks),
        "lengths": [_length_dict(p) for p in profile.lengths],
    }


def _recompute_fields(b: BlockProfile) -> dict:
    """The optional recompute fields of a block, as written (absent when not measured)."""
    out = {}
    if b.input_bytes is not None:
        out["input_bytes"] = b.input_bytes
    if b.input_kept_bytes is not None:
        out["input_kept_bytes"] = {str(k): v for k, v in b.input_kept_bytes.items()}
    return out


def profile_document(profile: Profile, **info: Any) -> dict:
    """What a writer saves: `profile` serialised, checked by reading it back (a writer's bug fails
    here with the field's name, not later in the planner), plus the information sections `info`
    (names from INFO_SECTIONS; None values are left out)."""
    unknown = sorted(set(info) - set(INFO_SECTIONS))
    if unknown:
        raise ValueError(f"profile sections {unknown} are not information sections {INFO_SECTIONS}")
    data = profile_to_dict(profile)
    if profile_from_dict(data, source=f"being written for {profile.model}") != profile:
        raise ValueError(f"profile of {profile.model} does not survive serialisation (check its bits keys)")
    data.update({k: v for k, v in info.items() if v is not None})
    return data


def kept_ratio_of(blocks) -> dict[int, float]:
    """Kept/raw bytes per bits over all blocks (the profile's information field `kept_ratio`)."""
    saved = sum(b.saved_bytes for b in blocks)
    return {bits: sum(b.kept_bytes[bits] for b in blocks) / saved if saved else 1.0 for bits in PROFILE_BITS}


def _block(r: "_Reader", b: Any, i: int, outer: str = "") -> BlockProfile:
    prefix = f"{outer}blocks[{i}]."
    if not isinstance(b, dict):
        r.fail(f"{outer}blocks[{i}]", f"must be an object, got {type(b).__name__}")
    index = r.integer(b, "index", prefix)
    if index != i:
        r.fail(f"{prefix}index", f"is {index}, expected {i} (blocks must be listed in index order)")
    kept = r.obj(b, "kept_bytes", prefix)
    quant = r.obj(b, "quant_s", prefix)
    kl = r.obj(b, "kept_bytes_lowest", prefix)
    input_bytes = r.integer(b, "input_bytes", prefix) if b.get("input_bytes") is not None else None
    input_kept = None
    if b.get("input_kept_bytes") is not None:
        ik = r.obj(b, "input_kept_bytes", prefix)
        input_kept = {bits: r.integer(ik, str(bits), f"{prefix}input_kept_bytes.") for bits in PROFILE_BITS}
    return BlockProfile(
        index=index, saved_bytes=r.integer(b, "saved_bytes", prefix),
        kept_bytes={bits: r.integer(kept, str(bits), f"{prefix}kept_bytes.") for bits in PROFILE_BITS},
        saved_bytes_lowest=r.integer(b, "saved_bytes_lowest", prefix),
        kept_bytes_lowest={bits: r.integer(kl, str(bits), f"{prefix}kept_bytes_lowest.") for bits in PROFILE_BITS},
        adapter_bytes=r.integer(b, "adapter_bytes", prefix), forward_s=r.number(b, "forward_s", prefix),
        backward_s=r.number(b, "backward_s", prefix),
        quant_s={bits: r.number(quant, str(bits), f"{prefix}quant_s.") for bits in PROFILE_BITS},
        input_bytes=input_bytes, input_kept_bytes=input_kept,
    )


class _Reader:
    """Typed field access whose errors name the file and the dotted field path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, what: str):
        where = f" field '{path}'" if path else ""
        raise FedquadError(f"profile {self.source}:{where} {what}")

    def get(self, data: dict, key: str, prefix: str = ""):
        if key not in data:
            self.fail(prefix + key, "is missing")
        return data[key]

    def obj(self, data: dict, key: str, prefix: str = "") -> dict:
        value = self.get(data, key, prefix)
        if not isinstance(value, dict):
            self.fail(prefix + key, f"must be an object, got {type(value).__name__}")
        return value

    def text(self, data: dict, key: str, prefix: str = "") -> str:
        value = self.get(data, key, prefix)
        if not isinstance(value, str):
            self.fail(prefix + key, f"must be a string, got {value!r}")
        return value

    def integer(self, data: dict, key: str, prefix: str = "", minimum: int = 0) -> int:
        value = self.get(data, key, prefix)
        # JSON writers sometimes emit 1.0e6 for a byte count: accept integral floats
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(prefix + key, f"must be an integer, got {value!r}")
        if value < minimum:
            self.fail(prefix + key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, data: dict, key: str, prefix: str = "") -> float:
        value = self.get(data, key, prefix)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(prefix + key, f"must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            self.fail(prefix + key, f"must be a finite non-negative number, got {value!r}")
        return float(value)
