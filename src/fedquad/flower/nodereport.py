"""What the server records about nodes beyond the simulator's round report: each node's time split
and data summary in its device line, and Flower's federated evaluation.

`node_fields` adds to a device's line (`fedquad.sim.round.finish_round`'s `device_extra`): the
node-side time split `node_timing` and its non-training seconds `round_overhead_s` (what a
round costs beyond training, measured per node: the planner's time model can add it to the
node's predicted round time), and for a node with its own data the summary it reported
(`local_examples`, `length_p50_tokens`, `length_p90_tokens`, `length_max_tokens`,
`labels_present`). A number that is not finite and non-negative is left out, never trusted.

Federated evaluation (run-config `federated-eval`): after a merged round that is due for
evaluation, every node with a local evaluation split gets the global adapter; the replies
become the round report's `federated_eval` (example-weighted accuracy and loss, each node's
line, failures with their reason).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from flwr.app import Message, RecordDict

TIMING_FIELDS = ("clientapp_start_s", "decode_s", "model_load_s", "data_load_s", "train_s", "upload_s", "relay_s",
                 "round_s", "non_training_s")
DATA_FIELDS = ("length_p50_tokens", "length_p90_tokens", "length_max_tokens", "labels_present")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def node_fields(result: dict, report: dict) -> dict:
    """The node-side fields of a device's round-report line (module docstring)."""
    out: dict = {}
    timing = result.get("timing")
    if isinstance(timing, dict):
        clean = {k: timing[k] for k in TIMING_FIELDS if _finite(timing.get(k))}
        if "round_s" in clean and "non_training_s" in clean:
            if isinstance(timing.get("worker"), str):  # relayed to the node's worker, or why not
                clean["worker"] = timing["worker"][:200]
            out["node_timing"] = clean
            out["round_overhead_s"] = clean["non_training_s"]
    if report.get("data-path") is not None:
        out["local_examples"] = report.get("examples")
        out.update({k: report.get(k) for k in DATA_FIELDS})
    return out


def evaluation_messages(server) -> tuple[list[Message], tuple | None]:
    """(messages, what was sent) for the federated evaluation of the round `server` just merged."""
    from fedquad.flower.codec import data_to_config, state_to_record

    report = server.pending_report
    if not server.settings.federated_eval or report is None or not server.recorder.evaluation_due(
            report["round"], server.state):
        return [], None
    nodes = [n for n in server.nodes.values() if n.report.get("evaluates")]
    ins = {"round": report["round"], "config": server.config.to_dict(), "vocabulary": server.vocabulary}
    content = RecordDict({"plan": data_to_config(ins, round=report["round"]),
                          "global": state_to_record(server.state.global_state)})
    messages = [Message(content, dst_node_id=n.node_id, message_type="evaluate", group_id=f"eval-{report['round']}")
                for n in nodes]
    return messages, (messages, {n.node_id: n.device.device_id for n in nodes})


def _line(reply: Message, node_id: int, device_id: str) -> dict:
    from fedquad.flower.codec import config_to_data
    line = {"device_id": device_id, "node_id": node_id}
    if reply.has_error():
        return {**line, "failure": f"node error {reply.error.code}: {reply.error.reason}"}
    try:
        result = config_to_data(reply.content["result"])
        m = result["metrics"]
        accuracy, loss, examples = float(m["accuracy"]), float(m["loss"]), int(m["examples"])
        if not (math.isfinite(accuracy) and math.isfinite(loss) and examples >= 0):
            raise ValueError("metrics are not finite")
    except (KeyError, ValueError, TypeError) as exc:
        return {**line, "failure": f"malformed reply: {exc}"}
    return {**line, "accuracy": accuracy, "loss": loss, "examples": examples, "node_timing": result.get("timing")}


def aggregate_evaluation(server, flight: tuple | None, replies: Iterable[Message]) -> dict | None:
    """The example-weighted federated evaluation of the replies, into `server.pending_report`."""
    from fedquad.flower.codec import _destinations, _replying_node

    if flight is None or server.pending_report is None:
        return None
    messages, sent = flight
    sent_to = _destinations(messages)
    lines: dict[int, dict] = {}
    for reply in replies:
        node_id = _replying_node(reply, sent_to)
        if node_id in sent and node_id not in lines:
            lines[node_id] = _line(reply, node_id, sent[node_id])
    for node_id, device_id in sent.items():
        lines.setdefault(node_id, {"device_id": device_id, "node_id": node_id,
                                   "failure": "no reply within the round timeout"})
    ok = [x for x in lines.values() if "failure" not in x and x["examples"] > 0]
    total = sum(x["examples"] for x in ok)
    out = {"accuracy": sum(x["accuracy"] * x["examples"] for x in ok) / total if total else None,
           "loss": sum(x["loss"] * x["examples"] for x in ok) / total if total else None,
           "examples": total, "nodes": [lines[n] for n in sorted(lines)]}
    server.pending_report["federated_eval"] = out
    return out
