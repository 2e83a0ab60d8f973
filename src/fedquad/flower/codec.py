"""Tensors and plain data <-> Flower records.

Adapter states travel as an `ArrayRecord` (one `Array` per adapter key, numpy-serialised, exact
shape and dtype). Structured data (a plan, a config, a result) travels as JSON text in a
`ConfigRecord`, so nothing depends on Flower's scalar types. Decoding never raises on a bad
record: it returns the problems, and the server turns them into a rejected update with reasons.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

if TYPE_CHECKING:
    import torch

JSON_KEY = "json"


def state_to_record(state: Mapping[str, "torch.Tensor"]) -> ArrayRecord:
    """An adapter state (key -> tensor) as an ArrayRecord, keys and order kept."""
    record = ArrayRecord()
    for key, value in state.items():
        record[key] = Array(value.detach().to("cpu").contiguous().numpy())
    return record


def record_to_state(record: ArrayRecord) -> tuple[dict[str, "torch.Tensor"], list[str]]:
    """(tensors, problems): every array that decodes, and why the others do not."""
    import torch  # lazily: the worker relay (fedquad.flower.worker) uses this module without torch
    state: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key in list(record.keys()):
        try:
            array = record[key].numpy()
            if not isinstance(array, np.ndarray):
                raise TypeError(f"decoded to {type(array).__name__}")
            state[key] = torch.from_numpy(np.array(array, copy=True))
        except Exception as exc:  # any malformed payload: report, do not crash the server
            problems.append(f"{key}: cannot decode array ({type(exc).__name__}: {exc})")
    return state, problems


def data_to_config(data: Mapping[str, Any], **scalars) -> ConfigRecord:
    """`data` as JSON text (key 'json'), plus optional readable scalar copies."""
    return ConfigRecord({JSON_KEY: json.dumps(data), **scalars})


def config_to_data(record: ConfigRecord) -> dict:
    text = record.get(JSON_KEY)
    if not isinstance(text, str):
        raise ValueError("record has no JSON payload")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("JSON payload is not an object")
    return data


def _destinations(messages: list[Message]) -> dict[str, int]:
    """Message id -> destination node, for messages the grid has sent (it sets their ids)."""
    return {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}


def _replying_node(reply: Message, sent_to: dict[str, int]) -> int:
    """The node a reply answers for. Errors the SuperLink makes itself (e.g. 'node unavailable'
    for a node that went away) come from the SuperLink's own id: match them by the message they
    reply to."""
    return sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
