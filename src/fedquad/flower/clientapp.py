"""The fedquad ClientApp: one per SuperNode (device).

* `query.profile`: report the node's device profile (node_config keys, else measured; see
  `fedquad.flower.node`) and, for a node with its own data (`data-path`), a summary of that
  data -- example count, label histogram, token lengths -- never the data itself
  (`fedquad.flower.localdata`). Unreadable data is a FedquadError: Flower sends it back as an
  error reply, and the server runs the rounds without this node.
* `train`: train the plan the server sent with the same function the simulator uses
  (`fedquad.sim.round.train_assignment`) on the node's own data (or, in the demo mode, its
  `partition-id` shard of the run's data), and reply with the trained tensors only plus metrics
  (examples, loss, measured time, measured memory) and the node-side time split of the round
  (`timing`: ClientApp start, message decode, model load, data load/tokenise, training, upload
  encode). A plan whose predicted memory exceeds the node's budget is refused before training,
  with the reason; one whose measured saved activations exceed what is left is stopped after its
  first step and reported as out of memory.
* `evaluate`: Flower's federated evaluation: the global adapter on the node's local evaluation
  split (only nodes that have one are asked, and only they load evaluation data).

Under the SuperNode's default `subprocess` isolation Flower starts a fresh ClientApp process for
every message, so in-process the imports and the model load are paid every round (tokens are
cached on disk by content hash). With node_config `worker-socket` this app is a thin relay to the
node's long-lived worker (`fedquad.flower.worker`), which keeps model and tokens in memory; this
module imports no torch, so the relay pays only Python and Flower start-up. The work itself is in
`fedquad.flower.nodework`, the same functions in both places.
"""

from __future__ import annotations

import os
import sys
import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedquad.flower.node import node_settings
from fedquad.flower.nodework import finish_timing

app = ClientApp()


def _log(context: Context, text: str) -> None:
    print(f"[fedquad node {context.node_id}] {text}", file=sys.stderr, flush=True)


def _process_age_s() -> float:
    """Seconds since this process was created: the ClientApp's start (interpreter, imports, Flower
    pulling the message and installing the app) when called at the top of a handler."""
    import psutil
    return max(0.0, time.time() - psutil.Process(os.getpid()).create_time())


def _relay(context: Context, request: dict) -> tuple[dict | None, str]:
    """The worker's reply to `request` ((None, why) without a worker or when it cannot be reached)."""
    socket_path = node_settings(context.node_config)["worker-socket"]
    if socket_path is None:
        return None, ""
    from fedquad.flower.worker import ask
    reply, problem = ask(socket_path, {**request, "node_config": dict(context.node_config)})
    if reply is None:
        _log(context, f"worker {socket_path} {problem}; running this message in the ClientApp process")
        return None, problem
    if "error" in reply:
        raise RuntimeError(f"node worker: {reply['error']}")
    return reply, ""


@app.query("profile")
def query_profile(msg: Message, context: Context) -> Message:
    """Reply with this node's device profile (budget, class, speed, links, data summary)."""
    from fedquad.flower.codec import config_to_data, data_to_config

    calibrate = bool(msg.content["query"].get("calibrate", True)) if "query" in msg.content else True
    run = config_to_data(msg.content["run"]) if "run" in msg.content else None
    reply, problem = _relay(context, {"kind": "profile", "run": run, "calibrate": calibrate})
    if reply is not None:
        report = {**reply["result"], "worker": "relayed"}
    else:
        from fedquad.flower.nodework import profile_report
        report = profile_report(context.node_config, run, calibrate)
        if problem:
            report["worker"] = problem
    _log(context, f"profile: {report}")
    return Message(RecordDict({"profile": data_to_config(report)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the plan in the message; reply with the trained tensors, metrics and time split."""
    from fedquad.flower.codec import config_to_data, data_to_config

    clientapp_start_s = _process_age_s()
    start = time.perf_counter()
    ins = config_to_data(msg.content["plan"])
    from fedquad.flower.worker import record_to_wire, wire_to_record
    reply, problem = _relay(context, {"kind": "train", "ins": ins, "global": record_to_wire(msg.content["global"])})
    if reply is not None:
        result = reply["result"]
        decoded = time.perf_counter()
        record = None if reply["update"] is None else wire_to_record(reply["update"])
        result["timing"]["upload_s"] += time.perf_counter() - decoded
        result["timing"]["worker"] = "relayed"
    else:
        from fedquad.flower.codec import record_to_state, state_to_record
        from fedquad.flower.nodework import train_work
        global_state, problems = record_to_state(msg.content["global"])
        if problems:
            raise RuntimeError(f"malformed global adapter from the server: {problems[:3]}")
        result, update = train_work(ins, global_state, context.node_config, lambda text: _log(context, text))
        encoded = time.perf_counter()
        record = None if update is None else state_to_record(update)
        result["timing"]["upload_s"] = time.perf_counter() - encoded
        if problem:
            result["timing"]["worker"] = problem
    result["total_time_s"] = time.perf_counter() - start
    finish_timing(result["timing"], clientapp_start_s, time.perf_counter() - start)
    content = RecordDict({"result": data_to_config(result, status=result["status"])})
    if record is not None:
        content["update"] = record
        content["metrics"] = MetricRecord({"num-examples": int(result["examples"]),
                                           "train-loss": float(result["loss"]),
                                           "train-time-s": float(result["time_s"])})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation: the global adapter on this node's local evaluation split."""
    from fedquad.flower.codec import config_to_data, data_to_config

    clientapp_start_s = _process_age_s()
    start = time.perf_counter()
    ins = config_to_data(msg.content["plan"])
    from fedquad.flower.worker import record_to_wire
    reply, problem = _relay(context, {"kind": "evaluate", "ins": ins, "global": record_to_wire(msg.content["global"])})
    if reply is not None:
        result = reply["result"]
    else:
        from fedquad.flower.codec import record_to_state
        from fedquad.flower.nodework import evaluate_work
        global_state, problems = record_to_state(msg.content["global"])
        if problems:
            raise RuntimeError(f"malformed global adapter from the server: {problems[:3]}")
        result = evaluate_work(ins, global_state, context.node_config, lambda text: _log(context, text))
    finish_timing(result["timing"], clientapp_start_s, time.perf_counter() - start)
    metrics = result["metrics"]
    return Message(RecordDict({"result": data_to_config(result),
                               "metrics": MetricRecord({"num-examples": int(metrics["examples"]),
                                                        "accuracy": float(metrics["accuracy"]),
                                                        "loss": float(metrics["loss"])})}), reply_to=msg)
