"""The fedquad ClientApp: one per SuperNode (device).

* `query.profile`: report the node's device profile (node_config keys, else measured; see
  `fedquad.flower.node`).
* `train`: train the plan the server sent with the same function the simulator uses
  (`fedquad.sim.round.train_assignment`), and reply with the trained tensors only plus metrics
  (examples, loss, measured time, measured memory). A plan whose predicted memory exceeds the
  node's budget is refused before training, with the reason, instead of running out of memory;
  one whose measured saved activations exceed what is left is stopped after its first step and
  reported as out of memory.

The base model and the tokenized data are cached per process. Under the SuperNode's default
`subprocess` isolation Flower starts a fresh ClientApp process for every message, so there the
cache only helps within a message; in the simulation engine (and any long-lived ClientApp
process) it saves reloading the model every round.
"""

from __future__ import annotations

import os
import sys
import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedquad.flower.node import available_memory_bytes, budget_bytes, describe_node, node_settings

app = ClientApp()

_CACHE: dict[tuple, tuple] = {}  # workload key -> (adapted, train tokens, train labels)
_PARTS: dict[tuple, list] = {}  # (workload key, num partitions) -> index arrays


def _log(context: Context, text: str) -> None:
    print(f"[fedquad node {context.node_id}] {text}", file=sys.stderr, flush=True)


def _workload_key(config) -> tuple:
    # The data settings decide the training set too (a held-out share is not trained on).
    return (config.model, config.task, config.data_root, config.train_examples, config.eval_examples,
            config.max_len, config.lora_rank, config.lora_alpha, config.seed, config.text_column,
            config.text_pair_column, config.label_column, config.label_names, config.eval_split,
            config.eval_file, config.eval_fraction)


def model_and_data(config):
    """(adapted model, train tokens, train labels) for `config`, loaded once per process."""
    from fedquad.sim.workload import load_model_and_data

    key = _workload_key(config)
    if key not in _CACHE:
        adapted, train_tokens, _eval, labels = load_model_and_data(config)
        _CACHE.clear()  # one workload per process: do not keep an old model alive
        _PARTS.clear()
        _CACHE[key] = (adapted, train_tokens, labels)
    return _CACHE[key]


def local_indices(config, labels, partition_id: int, num_partitions: int):
    from fedquad.sim.workload import partition_examples

    key = (_workload_key(config), num_partitions)
    if key not in _PARTS:
        _PARTS[key] = partition_examples(config, labels, num_partitions)
    return _PARTS[key][partition_id]


@app.query("profile")
def query_profile(msg: Message, context: Context) -> Message:
    """Reply with this node's device profile (budget, class, speed, links, data shard)."""
    from fedquad.flower.codec import data_to_config

    calibrate = bool(msg.content["query"].get("calibrate", True)) if "query" in msg.content else True
    report = describe_node(context.node_config, calibrate=calibrate)
    _log(context, f"profile: {report}")
    return Message(RecordDict({"profile": data_to_config(report)}), reply_to=msg)


def _assignment(data: dict):
    from fedquad.plan import ClientPlan, TrainOptions
    from fedquad.strategies import Assignment

    return Assignment(data["device_id"], ClientPlan.from_dict(data["plan"]), data.get("predicted_bytes"),
                      data.get("predicted_time_s"), data.get("reason", ""), TrainOptions.from_dict(data.get("options")))


def apply_fault(update: dict, fault: str) -> dict:
    """Test hook: a malformed update of the requested kind."""
    import torch

    out = dict(update)
    key = sorted(out)[0]
    if fault == "nan":
        bad = out[key].clone()
        bad.view(-1)[0] = float("nan")
        out[key] = bad
    elif fault == "wrong-key":
        out["not.an.adapter.key.weight"] = torch.zeros(2, 2)
    elif fault == "wrong-shape":
        out[key] = out[key].reshape(-1)[:-1].clone()
    return out


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the plan in the message; reply with the trained tensors and measured metrics."""
    from fedquad.client import QuantSettings
    from fedquad.flower.codec import config_to_data, data_to_config, record_to_state, state_to_record
    from fedquad.sim.config import from_dict
    from fedquad.sim.round import train_assignment

    start = time.perf_counter()
    settings = node_settings(context.node_config)
    ins = config_to_data(msg.content["plan"])
    round_index = int(ins["round"])
    config = from_dict(ins["config"], "plan message")
    a = _assignment(ins["assignment"])
    own_budget = settings["memory-budget-mb"] is not None or settings["memory-budget-fraction"] is not None
    if not own_budget and ins.get("run_config_budget_bytes") is not None:
        budget, budget_source = float(ins["run_config_budget_bytes"]), "run config node-budgets"
    else:
        budget, budget_source = budget_bytes(settings, ins.get("footprint_bytes"), available_memory_bytes())
    result = {"status": "ok", "reason": "", "budget_bytes": budget, "budget_source": budget_source,
              "examples": 0, "loss": None, "measured_bytes": None, "time_s": None, "pid": os.getpid()}

    def reply(update: dict | None = None) -> Message:
        result["total_time_s"] = time.perf_counter() - start
        content = RecordDict({"result": data_to_config(result, status=result["status"])})
        if update is not None:
            content["update"] = state_to_record(update)
            content["metrics"] = MetricRecord({"num-examples": int(result["examples"]),
                                               "train-loss": float(result["loss"]),
                                               "train-time-s": float(result["time_s"])})
        return Message(content, reply_to=msg)

    predicted = a.predicted_bytes
    if predicted is not None and predicted > budget:
        result["status"] = "refused"
        result["reason"] = (f"refused plan {a.plan.describe()}: it needs {predicted / 2**20:.1f} MiB, this node's "
                            f"budget is {budget / 2**20:.1f} MiB ({budget_source})")
        _log(context, f"round {round_index}: {result['reason']}")
        return reply()
    if settings["partition-id"] is None:
        raise RuntimeError("node_config needs partition-id and num-partitions (which shard of the data to train on)")

    adapted, train_tokens, labels = model_and_data(config)
    indices = local_indices(config, labels, settings["partition-id"], settings["num-partitions"])
    global_state, problems = record_to_state(msg.content["global"])
    if problems:
        raise RuntimeError(f"malformed global adapter from the server: {problems[:3]}")
    train_start = time.perf_counter()
    outcome = train_assignment(adapted, train_tokens, indices, config, QuantSettings(group_size=config.group_size),
                               round_index, global_state, a, fixed_bytes=float(ins["fixed_bytes"]),
                               budget_bytes=budget, time_s=None)
    train_s = time.perf_counter() - train_start
    result.update(status=outcome.status, reason=outcome.reason, examples=outcome.examples, loss=outcome.loss,
                  measured_bytes=outcome.measured_bytes, time_s=train_s)
    if outcome.status != "ok":
        _log(context, f"round {round_index}: {a.plan.describe()} {outcome.status}: {outcome.reason}")
        return reply()
    update = dict(outcome.update)
    if settings["fault"] and settings["fault-round"] in (None, round_index):
        update = apply_fault(update, settings["fault"])
        _log(context, f"round {round_index}: fault hook '{settings['fault']}' corrupts the update")
    _log(context, f"round {round_index}: trained {a.plan.describe()} on {outcome.examples} examples, "
                  f"loss {outcome.loss:.4f}, {train_s:.2f} s, {len(update)} tensors")
    return reply(update)
