"""The fedquad ServerApp: FedQuad (or any fedquad strategy) over real SuperNodes.

Per run: initialise, or resume from the checkpoint in `run-dir`; wait for `min-nodes`; ask every
node for its device profile (`query.profile`); then per round, through Flower's strategy loop
(`Strategy.start`, Message API):

* `configure_train`: the fedquad strategy plans with a `Device` per connected node (budget,
  class, speed, links, data size from its report) and each node gets a message with *its own*
  plan and the global adapter;
* `aggregate_train`: replies become `ClientOutcome`s (errors and nodes that missed the round
  timeout are `failed`, refusals and out-of-memory stops `oom`, undecodable updates `rejected`);
  the simulator's `finish_round` then runs the strategy's own per-key merge (rejects are recorded
  with their reasons), its `observe` (measured time and memory into the planner) and writes the
  round report in the simulator's schema;
* `configure_evaluate` / `aggregate_evaluate` (run-config `federated-eval`): nodes with a local
  evaluation split evaluate the global adapter; the example-weighted result goes into the round
  report as `federated_eval`;
* `evaluate_fn`: central evaluation on the server's own data (the task's evaluation split, or
  run-config `eval-data`), then the round report is appended to the history and a checkpoint
  written (atomic; Flower keeps none).

At the end the global adapter is saved with PEFT's `save_pretrained` in `<run-dir>/adapter`
(`peft.PeftModel.from_pretrained(base_model, that_folder)` loads it). Flower's FedAvg
aggregation is never called: it requires every reply to carry the same keys, and FedQuad's
replies differ by design. The same round functions (`fedquad.sim.round.begin_round` /
`finish_round`), strategy objects and training function run in `fedquad simulate`, so a strategy
behaves the same in simulation and on Flower (tests/test_round_parity.py checks it bitwise).
"""
from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy as FlowerStrategy

from fedquad.flower.server import FedquadServer, log
from fedquad.flower.settings import parse_run_config, resolve_run_dir

__all__ = ["FedquadServer", "FedquadStrategy", "app"]

app = ServerApp()


class FedquadStrategy(FlowerStrategy):
    """A Flower Message-API strategy that hands every decision to a fedquad strategy."""

    def __init__(self, server: FedquadServer):
        self.server = server

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.server.configure_round(grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from fedquad.flower.codec import state_to_record
        new_global = self.server.aggregate_round(replies)
        report = self.server.pending_report
        losses = [d["loss"] for d in report["devices"] if d["status"] == "ok" and d["loss"] is not None]
        metrics = MetricRecord({"participants": int(report["participants"]), "dropped": int(report["dropped"]),
                                "rejected": len(report["aggregation"]["rejected"]),
                                "train-loss": float(sum(losses) / len(losses)) if losses else 0.0})
        return state_to_record(new_global), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.server.evaluate_messages()  # federated evaluation, when the run config asks for it

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        out = self.server.aggregate_evaluation(replies)
        if out is None or out["accuracy"] is None:
            return None
        return MetricRecord({"accuracy": float(out["accuracy"]), "loss": float(out["loss"]),
                             "num-examples": int(out["examples"])})

    def summary(self) -> None:
        c = self.server.config
        log(f"strategy {c.strategy} on {c.model} / {c.task}: rounds {self.server.start_round}..{c.rounds - 1}, "
            f"{c.local_steps} local steps of batch {c.batch_size}, run dir {self.server.run_dir}")


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedquad.flower.codec import state_to_record

    config, settings = parse_run_config(context.run_config)
    run_dir = resolve_run_dir(settings, context.run_id)
    log(f"run {context.run_id}: run dir {run_dir}")
    server = FedquadServer(config, settings, run_dir)
    server.wait_for_nodes(grid)
    remaining = server.config.rounds - server.state.round_index
    if remaining > 0:
        FedquadStrategy(server).start(grid, state_to_record(server.state.global_state), num_rounds=remaining,
                                      timeout=settings.round_timeout, evaluate_fn=server.evaluate_fn)
    else:
        log("nothing left to run: every round of this run is done")
    server.finish()
