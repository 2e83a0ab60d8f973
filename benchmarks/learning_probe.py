"""Why do non-IID runs collapse to one class? Measurements for issue 9 item 2 (and host time, item 4).

Two probes, each one short process (MiniLM, SST-2 from ../shared/data):

* `features`: how much the frozen classification features of MiniLM differ between sentences.
  BERT's sequence classifier reads `pooler(h[CLS])`; all-MiniLM-L6-v2 was trained by
  sentence-transformers with *mean* pooling, so its [CLS] vector and pooler were never trained
  to tell sentences apart. Printed: the mean cosine similarity between the pooled features of
  different sentences and the between-sentence spread relative to the mean vector.
* `fed`: one strategy on the reference config (overrides as `key=value`), evaluated every round,
  printing per round the accuracy, the share of the most predicted class (1.0 = collapsed), the
  positive share of the sampled clients' examples (label skew), and host seconds (train, eval).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_probe.py features
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_probe.py fed seed=2 strategy=fedlora rounds=8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "sst2_reference", "config.json")


def _config(overrides: list[str]):
    from fedquad.sim.config import load_config
    return load_config(REFERENCE, list(overrides))


def probe_features(args) -> dict:
    from fedquad.datasets import iterate_batches, BatchConfig
    from fedquad.sim.workload import load_model_and_data
    config = _config(args.overrides)
    adapted, _, eval_tokens, _ = load_model_and_data(config)
    bert = adapted.model.base_model.model.bert
    feats = {"cls": [], "pooled": [], "mean": []}
    labels = []
    with torch.inference_mode():
        for batch in iterate_batches(eval_tokens, BatchConfig(64, shuffle=False)):  # length-bucketed order
            labels.append(batch.pop("labels"))
            out = bert(**batch)
            h = out.last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            feats["cls"].append(h[:, 0])
            feats["pooled"].append(out.pooler_output)
            feats["mean"].append((h * m).sum(1) / m.sum(1))
    result = {}
    for name, parts in feats.items():
        x = torch.cat(parts)
        xn = torch.nn.functional.normalize(x, dim=-1)
        cos = (xn @ xn.T)
        n = len(x)
        mean_cos = float((cos.sum() - n) / (n * (n - 1)))
        spread = float((x - x.mean(0)).norm(dim=-1).mean() / x.mean(0).norm())
        # how well a linear probe (ridge on the standardised frozen features, fitted on one half of
        # the dev split, scored on the other) separates the classes
        y = torch.cat(labels).float() * 2 - 1
        xs = (x - x.mean(0)) / (x.std(0) + 1e-6)
        xa = torch.cat([xs, torch.ones(n, 1)], 1)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        fit, test = perm[: n // 2], perm[n // 2:]
        a = xa[fit]
        w = torch.linalg.solve(a.T @ a + 10.0 * torch.eye(a.shape[1]), a.T @ y[fit, None])
        probe_acc = float(((xa[test] @ w).squeeze(-1).sign() == y[test]).float().mean())
        result[name] = {"mean_cosine": round(mean_cos, 4), "spread_over_mean_norm": round(spread, 4),
                        "linear_probe_acc_heldout_half": round(probe_acc, 4)}
    return result


def probe_fed(args) -> dict:
    from fedquad.sim.round import FederatedAlgorithm
    from fedquad.sim.runner import make_strategy, simulate
    from fedquad.sim.workload import build_workload
    config = _config(["eval_every=1", *args.overrides])
    start = time.perf_counter()
    workload = build_workload(config, None, show_progress=False)
    build_s = time.perf_counter() - start
    labels = np.asarray(workload.train_tokens.labels)
    algo = FederatedAlgorithm(workload, make_strategy(config))
    skew = []
    for r in range(config.rounds):
        idx = np.concatenate([workload.parts[d.device_id] for d in algo.sample_clients(r)])
        per_client = [float(labels[workload.parts[d.device_id]].mean()) if len(workload.parts[d.device_id]) else
                      float("nan") for d in algo.sample_clients(r)]
        skew.append({"round_pos_share": round(float(labels[idx].mean()), 3),
                     "client_pos_shares": [round(p, 2) for p in per_client]})
    start = time.perf_counter()
    result = simulate(config, None, workload=workload, show_progress=False, plots=False)
    run_s = time.perf_counter() - start
    rows = []
    for h in result.history:
        r = h["round"]
        rows.append({"round": r, "acc": round(h["accuracy"], 3) if h.get("accuracy") is not None else None,
                     "max_class_share": round(h.get("eval", {}).get("max_class_share", float("nan")), 3),
                     "train_s": round(h["host"]["train_s"], 2), "eval_s": round(h["host"]["eval_s"], 2),
                     "total_s": round(h["host"]["total_s"], 2),
                     "ok": sum(1 for c in h.get("devices", []) if c.get("status") == "ok") if r >= 0 else None,
                     **(skew[r] if r >= 0 else {})})
    rounds = [x for x in rows if x["round"] >= 0]
    return {"config": {k: getattr(config, k) for k in ("seed", "strategy", "rounds", "learning_rate", "local_steps",
                                                         "eval_examples", "partition_alpha")},
            "build_s": round(build_s, 1), "run_s": round(run_s, 1),
            "host_s_per_round": round(sum(x["total_s"] for x in rounds) / max(len(rounds), 1), 2),
            "eval_source": result.history[0].get("eval_source"), "rounds": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("probe", choices=("features", "fed"))
    parser.add_argument("overrides", nargs="*", help="reference-config overrides, key=value")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = (probe_features if args.probe == "features" else probe_fed)(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
