"""A ServerApp driving Flower's stock ``FedAvg``, as the baseline of ``benchmarks/overhead.py``.

It builds the run exactly as fedcomp's ServerApp does (same settings, model, initial
weights, central test set) and evaluates centrally after every round with the same code,
so the only difference left is the strategy. Each round's ``round_seconds`` is defined as
in ``strategies/server_app.py``: wall time from the end of one round's central
evaluation to the end of the next one's. No bytes are metered (that is fedcomp's extra),
so ``rounds.jsonl`` rows carry round, accuracy, loss and times only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedcomp.config import from_run_config
from fedcomp.experiment import eval_loader, run_model
from fedcomp.params import load_arrays, state_arrays
from fedcomp.results import default_run_dir
from fedcomp.training import evaluate
from strategies.channel import dense_record, record_tensors

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``rounds`` rounds of stock FedAvg; write ``rounds.jsonl`` and ``summary.json``."""
    config = from_run_config(context.run_config)
    run_dir = Path(str(config["output.dir"]) or default_run_dir(str(config["output.preset"])))
    run_dir.mkdir(parents=True, exist_ok=True)
    rounds_path = run_dir / "rounds.jsonl"
    rounds_path.write_text("")
    model = run_model(config)
    test = eval_loader(config)
    strategy = FedAvg(
        fraction_train=float(config["fraction"]),
        fraction_evaluate=0.0,
        min_train_nodes=int(config["server.min_clients"]),
    )
    started = time.perf_counter()
    clock = {"t": started}
    rows: list[dict[str, float]] = []
    initial: dict[str, float] = {}

    def round_end(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_arrays(model, record_tensors(arrays))
        metrics = evaluate(model, test)
        now = time.perf_counter()
        if server_round == 0:
            initial.update(metrics)
        else:
            row = {"round": server_round, "accuracy": metrics["accuracy"], "loss": metrics["loss"],
                   "round_seconds": now - clock["t"], "wall_seconds": now - started}
            rows.append(row)
            with rounds_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        clock["t"] = now
        return MetricRecord({"accuracy": metrics["accuracy"], "loss": metrics["loss"]})

    strategy.start(
        grid=grid,
        initial_arrays=dense_record(state_arrays(model)),
        num_rounds=int(config["rounds"]),
        train_config=ConfigRecord(),
        evaluate_fn=round_end,
    )
    accuracies = [row["accuracy"] for row in rows]
    summary = {
        "strategy": "flwr.serverapp.strategy.FedAvg",
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "initial_accuracy": initial.get("accuracy"),
        "rounds": len(rows),
        "num_clients": int(config["num_clients"]),
        "wall_seconds": time.perf_counter() - started,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
