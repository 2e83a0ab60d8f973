"""What a node does with a message, apart from Flower: the work behind the ClientApp's handlers.

The ClientApp (`fedquad.flower.clientapp`) runs these in its own process, or relays them to the
node's long-lived worker (`fedquad.flower.worker`), which runs the same functions with the model
and the tokens kept in memory. Either way the node trains with the simulator's function
(`fedquad.sim.round.train_assignment`) and replies with the same result fields. Importing this
module imports no torch (every heavy import is inside a function), so a relaying ClientApp stays
light.
"""

from __future__ import annotations

import os
import time

from fedquad.flower.node import available_memory_bytes, budget_bytes, describe_node, node_settings

_CACHE: dict[tuple, tuple] = {}  # workload key -> (adapted, train tokens, train labels)
_PARTS: dict[tuple, list] = {}  # (workload key, num partitions) -> index arrays
_MODELS: dict[tuple, object] = {}  # local-data mode: model key -> adapted model


def _workload_key(config) -> tuple:
    # The data settings decide the training set too (a held-out share is not trained on).
    return (config.model, config.task, config.data_root, config.train_examples, config.eval_examples,
            config.max_len, config.lora_rank, config.lora_alpha, config.seed, config.text_column,
            config.text_pair_column, config.label_column, config.label_names, config.eval_split,
            config.eval_file, config.eval_fraction)


def model_and_data(config):
    """(adapted model, train tokens, train labels) for `config`, loaded once per process (demo mode)."""
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


def local_model(config, vocabulary: dict):
    """The run's model with the server's head (local-data mode), loaded once per process."""
    from fedquad.models import LoraSettings, load_model

    key = (config.model, vocabulary["head"], vocabulary["num_labels"], config.lora_rank, config.lora_alpha, config.seed)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(config.model, task=vocabulary["head"], num_labels=int(vocabulary["num_labels"]),
                                  lora=LoraSettings(rank=config.lora_rank, alpha=config.lora_alpha), seed=config.seed,
                                  device="cpu")
    return _MODELS[key]


def local_tokens(config, settings: dict, vocabulary: dict, adapted, *, evaluation: bool = False):
    """(data, tokens) of the node's own training (or local evaluation) data, tokens cached on disk."""
    from fedquad.flower.localdata import cache_dir, read_eval, read_train
    from fedquad.tasks import task_kind

    data = (read_eval if evaluation else read_train)(config, settings, vocabulary)
    tokens = task_kind(data).tokenize(data, adapted.tokenizer, config.max_len, cache_dir=cache_dir(settings))
    return data, tokens


def node_workload(config, settings: dict, vocabulary: dict | None, timing: dict):
    """(adapted, train tokens, indices) this node trains on; model and data load times into `timing`."""
    import numpy as np

    started = time.perf_counter()
    if settings["data-path"] is None:
        if settings["partition-id"] is None:
            raise RuntimeError("node_config needs data-path (this node's own data) or partition-id and "
                               "num-partitions (the demo mode: a shard of the run's data)")
        adapted, train_tokens, labels = model_and_data(config)
        timing["model_load_s"] = time.perf_counter() - started  # demo mode: includes the run's data
        started = time.perf_counter()
        indices = local_indices(config, labels, settings["partition-id"], settings["num-partitions"])
        timing["data_load_s"] = time.perf_counter() - started
        return adapted, train_tokens, indices
    if vocabulary is None:
        raise RuntimeError("the server's message carries no label vocabulary (a server older than this node?)")
    adapted = local_model(config, vocabulary)
    timing["model_load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    _data, train_tokens = local_tokens(config, settings, vocabulary, adapted)
    timing["data_load_s"] = time.perf_counter() - started
    return adapted, train_tokens, np.arange(len(train_tokens))



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


def finish_timing(timing: dict, clientapp_start_s: float, wall_s: float) -> dict:
    """The node-side split of one message: `clientapp_start_s` (process start to handler),
    `wall_s` (the handler, relay included), their sum `round_s` and its non-training part."""
    timing["clientapp_start_s"] = clientapp_start_s
    if "handler_s" in timing:  # relayed: what the relay itself added
        timing["relay_s"] = max(0.0, wall_s - timing["handler_s"])
    timing["round_s"] = clientapp_start_s + wall_s
    timing["non_training_s"] = max(0.0, timing["round_s"] - timing.get("train_s", 0.0))
    return timing


def profile_report(node_config, run: dict | None, calibrate: bool) -> dict:
    """The node's answer to the profile query: its device profile and, with `data-path`, the
    summary of its own data (never the data). Unreadable data raises FedquadError."""
    from fedquad.flower.localdata import evaluates, summary
    from fedquad.sim.config import from_dict

    report = describe_node(node_config, calibrate=calibrate)
    settings = node_settings(node_config)
    if settings["data-path"] is not None:
        if run is None:
            raise RuntimeError("the profile query carries no run settings: cannot read this node's data")
        config, vocabulary = from_dict(run["config"], "profile query"), run["vocabulary"]
        adapted = local_model(config, vocabulary)
        data, tokens = local_tokens(config, settings, vocabulary, adapted)  # also warms the token cache
        report.update(summary(data, tokens, vocabulary), evaluates=evaluates(settings, config))
    return report


def node_step_memory(ins: dict, plan, budget: float):
    """The client's step-memory guard for a train message: the server's profile predicts each
    step's peak, `budget` (this node's memory now) bounds it; steps that would not fit are split
    into micro-batches (`fedquad.client.train`). None when the server sent no profile."""
    if ins.get("profile") is None:
        return None
    from fedquad.client import StepMemory
    from fedquad.costmodel import profile_from_dict
    return StepMemory.from_profile(profile_from_dict(ins["profile"], "plan message"), plan, budget)


def train_work(ins: dict, global_state: dict, node_config, log=print) -> tuple[dict, dict | None]:
    """(result, trained tensors or None) for a train message's plan `ins` and decoded `global_state`."""
    from fedquad.client import QuantSettings
    from fedquad.sim.config import from_dict
    from fedquad.sim.round import train_assignment

    start = time.perf_counter()
    timing: dict = {}
    settings = node_settings(node_config)
    round_index = int(ins["round"])
    config = from_dict(ins["config"], "plan message")
    a = _assignment(ins["assignment"])
    own_budget = settings["memory-budget-mb"] is not None or settings["memory-budget-fraction"] is not None
    if not own_budget and ins.get("run_config_budget_bytes") is not None:
        budget, budget_source = float(ins["run_config_budget_bytes"]), "run config node-budgets"
    else:
        budget, budget_source = budget_bytes(settings, ins.get("footprint_bytes"), available_memory_bytes())
    result = {"status": "ok", "reason": "", "budget_bytes": budget, "budget_source": budget_source,
              "examples": 0, "loss": None, "measured_bytes": None, "time_s": None, "pid": os.getpid(),
              "timing": timing}
    predicted = a.predicted_bytes
    if predicted is not None and predicted > budget:
        result["status"] = "refused"
        result["reason"] = (f"refused plan {a.plan.describe()}: it needs {predicted / 2**20:.1f} MiB, this node's "
                            f"budget is {budget / 2**20:.1f} MiB ({budget_source})")
        log(f"round {round_index}: {result['reason']}")
        timing["handler_s"] = time.perf_counter() - start
        return result, None
    timing["decode_s"] = time.perf_counter() - start
    adapted, train_tokens, indices = node_workload(config, settings, ins.get("vocabulary"), timing)
    train_start = time.perf_counter()
    step_memory = node_step_memory(ins, a.plan, budget)
    outcome = train_assignment(adapted, train_tokens, indices, config, QuantSettings(group_size=config.group_size),
                               round_index, global_state, a, fixed_bytes=float(ins["fixed_bytes"]),
                               budget_bytes=budget, time_s=None, step_memory=step_memory)
    train_s = time.perf_counter() - train_start
    timing["train_s"] = train_s
    result.update(status=outcome.status, reason=outcome.reason, examples=outcome.examples, loss=outcome.loss,
                  measured_bytes=outcome.measured_bytes, time_s=train_s, micro_batches=outcome.micro_batches)
    timing["handler_s"] = time.perf_counter() - start
    if outcome.status != "ok":
        log(f"round {round_index}: {a.plan.describe()} {outcome.status}: {outcome.reason}")
        return result, None
    update = dict(outcome.update)
    if settings["fault"] and settings["fault-round"] in (None, round_index):
        update = apply_fault(update, settings["fault"])
        log(f"round {round_index}: fault hook '{settings['fault']}' corrupts the update")
    log(f"round {round_index}: trained {a.plan.describe()} on {outcome.examples} examples, "
        f"loss {outcome.loss:.4f}, {train_s:.2f} s, {len(update)} tensors")
    return result, update


def evaluate_work(ins: dict, global_state: dict, node_config, log=print) -> dict:
    """Federated evaluation: metrics of `global_state` on the node's local evaluation split."""
    from fedquad.evaluation import evaluate as evaluate_state
    from fedquad.sim.config import from_dict

    start = time.perf_counter()
    timing: dict = {}
    settings = node_settings(node_config)
    config, vocabulary = from_dict(ins["config"], "evaluate message"), ins["vocabulary"]
    loaded = time.perf_counter()
    adapted = local_model(config, vocabulary)
    timing["model_load_s"] = time.perf_counter() - loaded
    loaded = time.perf_counter()
    _data, tokens = local_tokens(config, settings, vocabulary, adapted, evaluation=True)
    timing["data_load_s"] = time.perf_counter() - loaded
    evaluated = time.perf_counter()
    metrics = evaluate_state(adapted, global_state, tokens, batch_size=64, max_examples=config.eval_examples,
                             seed=config.seed)
    timing["eval_s"] = time.perf_counter() - evaluated
    timing["handler_s"] = time.perf_counter() - start
    log(f"round {ins['round']}: local evaluation on {int(metrics['examples'])} examples, "
        f"accuracy {metrics['accuracy']:.4f}")
    return {"metrics": metrics, "timing": timing, "pid": os.getpid()}
