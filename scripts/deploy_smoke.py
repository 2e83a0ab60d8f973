#!/usr/bin/env python3
"""Deployment smoke: a real Flower SuperLink and three SuperNodes on loopback, each holding its own
data file with a different label skew, run fedquad for three rounds. Prints each node's plan per
round and the node-side time split (ClientApp start, model load, data load/tokenise, training,
upload), stops every process it started by its PID (also on failure or Ctrl-C) and prints its
wall time.

    python scripts/deploy_smoke.py [--model tiny-bert|minilm] [--rounds 3] [--json] [--keep]

`--model tiny-bert` (default): the generated sentiment task, 2 local steps of batch 8 x 24.
`--model minilm`: SST-2 from the data root, the reference's local steps (8 steps of batch 16 x
64, benchmarks/sst2_reference/config.json) and its shipped profile. Each node runs a long-lived worker (`fedquad.flower.worker`) that keeps the model loaded, its
ClientApp relaying to it (`--no-worker`: every ClientApp process loads the model). `--json` prints only a JSON
summary on stdout (progress goes to stderr): "model", "nodes_with_local_data",
"non_training_share" (median over node-rounds of the non-training part of a node's round;
"non_training_share_after_clientapp_start": the same share of the round without Flower's
per-message process start),
the median time split and every node-round's split.

Exit status 0 when every round completed, the run finished and no process is left behind.
Insecure transport (loopback only); docs/deployment.md shows TLS and SuperNode authentication.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the local-federation tooling lives there
from local_federation import LocalFederation, write_app_dir  # noqa: E402

# Three devices of different classes and memory budgets (fraction of the model's full-depth
# footprint, the cost model's unit: 1.0 fits full-depth LoRA without quantization), each with its
# own data: mostly negative, mostly positive, balanced.
NODES = [
    {"device-class": "jetson-tx2", "memory-budget-fraction": 0.72, "positive_share": 0.15},
    {"device-class": "jetson-orin-nano", "memory-budget-fraction": 0.8, "positive_share": 0.85},
    {"device-class": "jetson-agx-orin", "memory-budget-fraction": 1.1, "positive_share": 0.5},
]
WORKLOADS = {
    "tiny-bert": {"task": "synthetic", "examples_per_node": 200, "run": {
        "model": "tiny-bert", "task": "synthetic", "train-examples": 200, "eval-examples": 128, "max-len": 24,
        "batch-size": 8, "local-steps": 2, "profile-repeats": 1}},
    "minilm": {"task": "sst2", "examples_per_node": 400, "run": {
        "model": "minilm", "task": "sst2", "train-examples": 200, "eval-examples": 256, "max-len": 64,
        "batch-size": 16, "local-steps": 8, "profile": "minilm-b16-s64"}},
}
SPLIT = ("clientapp_start_s", "decode_s", "model_load_s", "data_load_s", "train_s", "upload_s", "relay_s")


def write_node_data(folder: Path, task: str, examples: int) -> list[dict]:
    """One CSV per node (sentence,label with text labels), drawn from `task`'s training data with
    the node's label skew; returns each node's label counts."""
    import numpy as np

    from fedquad.datasets import load_task
    data = load_task(task, "train")
    rng = np.random.default_rng(0)
    by_label = {c: list(rng.permutation(np.flatnonzero(data.labels == c))) for c in range(data.num_labels)}
    counts = []
    for i, node in enumerate(NODES):
        positive = int(round(node["positive_share"] * examples))
        take = [by_label[0].pop() for _ in range(examples - positive)] + [by_label[1].pop() for _ in range(positive)]
        path = folder / f"node{i}" / "train.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "label"])
            for j in sorted(take):
                w.writerow([data.texts[j].strip(), data.label_names[int(data.labels[j])]])
        counts.append({"path": str(path), "negative": examples - positive, "positive": positive})
    return counts


def describe_round(report: dict) -> list[str]:
    lines = []
    for d in report["devices"]:
        plan = d.get("plan")
        if plan is None:
            text = "sits out"
        else:
            text = f"d={plan['depth']}" + (f" q={plan['quant_layers']}@int{plan['bits']}" if plan["quant_layers"] else "")
        loss = "" if d.get("loss") is None else f", loss {d['loss']:.4f}"
        failure = f" ({d['failure']})" if d.get("failure") else ""
        lines.append(f"  node {d.get('node_id')} {d['device_id']:<22} plan {text:<14} -> {d['status']}{failure}{loss}")
        t = d.get("node_timing")
        if t:
            split = " ".join(f"{k[:-2]} {t.get(k, 0.0):.2f}" for k in SPLIT)
            lines.append(f"      node-side {t['round_s']:.2f} s: {split}; non-training "
                         f"{100 * t['non_training_s'] / t['round_s']:.0f}%")
    fed = report.get("federated_eval")
    if fed and fed.get("accuracy") is not None:
        lines.append(f"  federated evaluation: accuracy {fed['accuracy']:.4f} on {fed['examples']} local examples "
                     f"of {sum('failure' not in n for n in fed['nodes'])} nodes")
    return lines


def summarise(history: list[dict], model: str, local_nodes: int) -> dict:
    node_rounds = [{"round": h["round"], "device_id": d["device_id"], **d["node_timing"]}
                   for h in history if h["round"] >= 0 for d in h["devices"] if d.get("node_timing")
                   and d["status"] == "ok"]
    shares = [x["non_training_s"] / x["round_s"] for x in node_rounds if x["round_s"] > 0]
    # the same without Flower's per-message process start: what fedquad's own code adds
    own = [max(0.0, x["non_training_s"] - x.get("clientapp_start_s", 0.0)) / (x["round_s"] - x["clientapp_start_s"])
           for x in node_rounds if x["round_s"] - x.get("clientapp_start_s", 0.0) > 0]
    last = next((h for h in reversed(history) if h.get("accuracy") is not None), {})
    fed = next((h["federated_eval"] for h in reversed(history) if (h.get("federated_eval") or {}).get("accuracy")
                is not None), None)
    return {"model": model, "nodes_with_local_data": local_nodes,
            "worker": all(x.get("worker") == "relayed" for x in node_rounds) if node_rounds else None,
            "non_training_share": statistics.median(shares) if shares else None,
            "non_training_share_after_clientapp_start": statistics.median(own) if own else None,
            "median_split_s": {k: statistics.median(x.get(k, 0.0) for x in node_rounds) for k in (*SPLIT, "round_s")}
            if node_rounds else {},
            "rounds": sum(1 for h in history if h["round"] >= 0),
            "accuracy": last.get("accuracy"), "federated_accuracy": None if fed is None else fed["accuracy"],
            "node_rounds": node_rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strategy", default="fedquad")
    parser.add_argument("--model", default="tiny-bert", choices=sorted(WORKLOADS))
    parser.add_argument("--json", action="store_true", help="print only a JSON summary on stdout")
    parser.add_argument("--no-federated-eval", action="store_true",
                        help="skip Flower's federated evaluation (each node holds out 20%% of its file for it)")
    parser.add_argument("--no-worker", action="store_true",
                        help="no per-node worker: every message's ClientApp process loads the model itself")
    parser.add_argument("--workdir", help="work folder (default: a new temporary folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, checkpoint, adapter)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the run may take at most")
    parser.add_argument("--compile", action="store_true",
                        help="let each ClientApp process compile the quantizer (slower start, faster steps)")
    args = parser.parse_args(argv)
    out = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    started = time.perf_counter()
    workdir = args.workdir or tempfile.mkdtemp(prefix="fedquad-smoke-")
    run_dir = os.path.join(workdir, "run")
    ok, summary = False, None
    extra_env = {} if args.compile else {"FEDQUAD_QUANT_COMPILE": "0"}
    fed = LocalFederation(workdir, extra_env=extra_env)
    workload = WORKLOADS[args.model]
    federated = not args.no_federated_eval
    try:
        counts = write_node_data(Path(workdir) / "nodes", workload["task"], workload["examples_per_node"])
        fed.start_superlink()
        say(f"SuperLink on {fed.address} (pid {fed.procs[0].pid})")
        for i, (node, count) in enumerate(zip(NODES, counts)):
            folder = Path(count["path"]).parent
            config = {"data-path": count["path"], "cache-dir": str(folder / "cache"), "device-id": f"node{i}",
                      **{k: v for k, v in node.items() if k != "positive_share"}}
            if not args.no_worker:
                worker = fed.start_worker(f"n{i}", folder / "worker.sock")
                config["worker-socket"] = str(folder / "worker.sock")
                say(f"worker {i} (pid {worker.pid}) on {folder / 'worker.sock'}")
            if federated:
                config["eval-fraction"] = 0.2
            proc = fed.start_supernode(f"n{i}", config)
            say(f"SuperNode {i} (pid {proc.pid}): {count['negative']} negative / {count['positive']} positive "
                f"examples in {count['path']}; {config}")
        app_dir = write_app_dir(os.path.join(workdir, "app"))
        run_id = fed.run_app(app_dir, {
            **workload["run"], "strategy": args.strategy, "rounds": args.rounds, "eval-every": 1,
            "run-dir": run_dir, "min-nodes": len(NODES), "round-timeout": 600.0, "federated-eval": federated})
        say(f"run {run_id} started; run dir {run_dir}")
        printed = set()

        def show_rounds() -> None:
            try:
                with open(os.path.join(run_dir, "history.json")) as f:
                    history = json.load(f)
            except (OSError, json.JSONDecodeError):
                return
            for h in history:
                if h["round"] >= 0 and h["round"] not in printed:
                    printed.add(h["round"])
                    acc = "" if h.get("accuracy") is None else f", server accuracy {h['accuracy']:.4f}"
                    say(f"round {h['round']}: {h['round_time_s']:.1f} s{acc}")
                    say("\n".join(describe_round(h)))
            for proc in fed.procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")

        status = fed.wait_run(run_id, timeout=args.timeout, on_poll=show_rounds)
        show_rounds()
        say(f"run {run_id}: {status}")
        server_log = fed.run_log(run_id)
        with open(os.path.join(workdir, "logs", "serverapp.log"), "w") as f:
            f.write(server_log)
        if status != "finished:completed" or len(printed) != args.rounds:
            print(server_log[-6000:], file=sys.stderr)
            raise RuntimeError(f"run ended {status} after {len(printed)} of {args.rounds} rounds")
        with open(os.path.join(run_dir, "final.json")) as f:
            final = json.load(f)
        with open(os.path.join(run_dir, "history.json")) as f:
            summary = summarise(json.load(f), args.model, len(NODES))
        say(f"final accuracy {final['accuracy']}, adapter in {final['adapter']}")
        if summary["non_training_share"] is not None:
            m = summary["median_split_s"]
            say(f"node-side median over {len(summary['node_rounds'])} node-rounds: round {m['round_s']:.2f} s = "
                + ", ".join(f"{k[:-2]} {m[k]:.2f}" for k in SPLIT)
                + f"; non-training share {100 * summary['non_training_share']:.0f}%")
        ok = True
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except Exception as exc:
        print(f"smoke failed: {exc}", file=sys.stderr)
    finally:
        fed.stop()
        left = fed.leftover_pids()
        say(f"stopped {len(fed.procs)} processes by PID: "
            + ", ".join(f"{p.name}={p.pid}" for p in fed.procs) + ("" if not left else f"; STILL RUNNING: {left}"))
        ok = ok and not left
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif ok or args.keep:
            say(f"work folder kept: {workdir}")
        wall = time.perf_counter() - started
        say(f"smoke {'passed' if ok else 'FAILED'}: wall time {wall:.1f} s")
        if args.json:
            print(json.dumps({**(summary or {"model": args.model, "nodes_with_local_data": 0,
                                              "non_training_share": None}), "passed": ok, "wall_s": wall}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
