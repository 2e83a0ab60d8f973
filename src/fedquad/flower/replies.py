"""Train replies into round outcomes: what the server believes of a node's answer.

A reply is untrusted input (a node may send NaN, a string, a huge number, no update, or answer a
round it was never sent): every field is checked here before the round's shared code
(`fedquad.sim.round.finish_round`) merges anything, and an unusable reply becomes a "rejected" or
"failed" outcome with its reason rather than a failed round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from flwr.app import Message

from fedquad.flower.codec import _destinations, _replying_node


def train_outcomes(flight, replies: Iterable[Message], nodes: dict, round_timeout_s: float) -> tuple[dict, dict]:
    """(device id -> outcome for every node sent a plan in `flight`, device id -> the reply's node
    fields). A node in `nodes` (node id -> the server's Node) gets the budget it reported now, which
    plans its next round, and its latest measured per-round overhead."""
    from fedquad.flower.codec import config_to_data, record_to_state
    from fedquad.flower.node import with_budget
    from fedquad.flower.nodereport import node_fields
    from fedquad.strategies import ClientOutcome

    by_node: dict[int, ClientOutcome] = {}
    extra: dict[str, dict] = {}
    sent_to = _destinations(flight.messages)
    for reply in replies:
        node_id = _replying_node(reply, sent_to)
        if node_id not in flight.sent or node_id in by_node:
            continue  # a late reply to an earlier round or run
        work = flight.sent[node_id]
        a, device = work.assignment, work.device
        if reply.has_error():
            by_node[node_id] = ClientOutcome(a, "failed", f"node error {reply.error.code}: {reply.error.reason}",
                                             budget_bytes=device.budget_bytes)
            continue
        try:
            result = config_to_data(reply.content["result"])
            numbers = reply_numbers(result)
        except (KeyError, ValueError) as exc:
            by_node[node_id] = ClientOutcome(a, "rejected", f"malformed reply: {exc}",
                                             budget_bytes=device.budget_bytes)
            continue
        budget = numbers["budget_bytes"] or device.budget_bytes
        node = nodes.get(node_id)
        if node is not None:  # the node's memory as it reported it now plans the next round
            node.device = with_budget(node.device, budget)
        extra[a.device_id] = {"node_id": node_id, "budget_source": result.get("budget_source"),
                              "total_time_s": result.get("total_time_s"), "pid": result.get("pid")}
        extra[a.device_id].update(node_fields(result, node.report if node is not None else {}))
        if node is not None and "round_overhead_s" in extra[a.device_id]:  # latest measured, per node
            node.report["round_overhead_s"] = extra[a.device_id]["round_overhead_s"]
        status = result.get("status")
        if status == "refused":
            by_node[node_id] = ClientOutcome(a, "oom", result.get("reason", "refused"), budget_bytes=budget)
        elif status == "oom":
            by_node[node_id] = ClientOutcome(a, "oom", result.get("reason", "out of memory"),
                                             measured_bytes=numbers["measured_bytes"], budget_bytes=budget)
        elif status != "ok":
            by_node[node_id] = ClientOutcome(a, "failed", f"node reported {status!r}: {result.get('reason')}",
                                             budget_bytes=budget)
        elif "update" not in reply.content:
            by_node[node_id] = ClientOutcome(a, "rejected", "reply carries no update", budget_bytes=budget)
        else:
            update, problems = record_to_state(reply.content["update"])
            examples, problem = reply_examples(result)
            problems += [f"malformed reply: {problem}"] if problem else []
            if problems:
                by_node[node_id] = ClientOutcome(a, "rejected", "; ".join(problems), budget_bytes=budget)
            else:
                by_node[node_id] = ClientOutcome(a, "ok", "", update, examples, numbers["loss"],
                                                 numbers["measured_bytes"], numbers["time_s"], budget,
                                                 micro_batches=int(result.get("micro_batches") or 1))
    timeout = round_timeout_s
    for node_id, work in flight.sent.items():
        if node_id not in by_node:  # missed the round: a lower bound of its time is what it was given
            by_node[node_id] = ClientOutcome(work.assignment, "failed",
                                             f"no reply within the round timeout ({timeout:.0f} s)",
                                             time_s=timeout, budget_bytes=work.device.budget_bytes)
    return {o.device_id: o for o in by_node.values()}, extra


def reply_numbers(result: dict) -> dict[str, float | None]:
    """The numbers a train reply carries (None where absent), checked before anything uses them.

    JSON lets a node send NaN, 1e400 (infinity), a string or a list anywhere; such a value raises
    ValueError naming the field, and the server rejects the reply instead of failing the round."""
    numbers: dict[str, float | None] = {}
    for key, nonnegative in (("budget_bytes", True), ("measured_bytes", True), ("time_s", True), ("loss", False)):
        value = result.get(key)
        if value is None:
            numbers[key] = None
            continue
        try:
            number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        except OverflowError:  # an int beyond float range
            number = math.inf
        if number is None or not math.isfinite(number) or (nonnegative and number < 0):
            raise ValueError(f"{key} is {str(value)[:40]!r}, not a finite number" + (" >= 0" if nonnegative else ""))
        numbers[key] = number
    return numbers


def reply_examples(result: dict) -> tuple[int | None, str | None]:
    """(the example count of a train reply, None) or (None, why it is unusable): the aggregation's rule."""
    from fedquad.aggregation import check_examples
    return check_examples(result.get("examples"))
