"""The files a run writes: config.json, rounds.jsonl, summary.json and the accuracy plot.

Every byte figure comes from the run's `TransferMeter`; the recorder only sums and writes.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from fedcomp.errors import DivergedError
from fedcomp.records.checkpoint import write_atomic
from fedcomp.records.meter import TransferMeter
from fedcomp.records.plots import plot_accuracy_vs_mb
from fedcomp.records.trackers import open_trackers

MB = 1e6
DIVERGED = "diverged.json"  # in a run folder instead of summary.json: the run stopped as diverged


def default_run_dir(preset: str, root: str | Path = "runs") -> Path:
    """``runs/<timestamp>-<preset>``."""
    return Path(root) / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{preset}"


def run_folder(config: Mapping[str, Any]) -> Path:
    """The run's folder: ``output.dir``, or a fresh default one for its preset."""
    return Path(str(config["output.dir"]) or default_run_dir(str(config["output.preset"])))


def write_diverged(run_dir: str | Path, err: DivergedError) -> None:
    """Record in the run folder that the run stopped as diverged, and why (see `read_diverged`)."""
    write_atomic(Path(run_dir) / DIVERGED, json.dumps({"round": err.round, "reason": str(err)}).encode())


def read_diverged(run_dir: str | Path) -> DivergedError | None:
    """The `DivergedError` a run folder records, or None if the run did not stop as diverged."""
    path = Path(run_dir) / DIVERGED
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())
    return DivergedError(str(entry["reason"]), int(entry["round"]))


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's rounds.jsonl (a last line still being written is left out)."""
    path = Path(run_dir) / "rounds.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def accuracy_curve(rounds: list[dict[str, Any]], initial_accuracy: float | None) -> tuple[list[float], list[float]]:
    """(cumulative MB, accuracy) points, starting at the initial model when known."""
    mb = [r["cum_bytes_total"] / MB for r in rounds]
    acc = [r["accuracy"] for r in rounds]
    if initial_accuracy is not None:
        mb, acc = [0.0, *mb], [initial_accuracy, *acc]
    return mb, acc


def final_extra_metrics(rows: list[dict[str, Any]], prefix: str = "f4_") -> dict[str, Any]:
    """The last value of every ``prefix`` metric over the rows (rows without it are skipped)."""
    final: dict[str, Any] = {}
    for row in rows:
        final.update({k: v for k, v in row.items() if k.startswith(prefix)})
    return final


class RunRecorder:
    """Writes a run's files as the run goes: a row per round, the summary at the end.

    Without a meter (a strategy that meters nothing, such as Flower's stock FedAvg in the
    overhead benchmark) the rows and summary carry accuracy and times only. ``model_bytes``
    (the model's float32 size) gives the summary's FedAvg baseline: what plain FedAvg sends
    in place of the same messages (the model in every training and evaluation message down,
    and in every training reply that carried tensors up).
    """

    def __init__(self, run_dir: str | Path, config: Mapping[str, Any], meter: TransferMeter | None,
                 model_bytes: int = 0,
                 restored: tuple[list[dict[str, Any]], dict[str, float] | None] | None = None) -> None:
        """``restored``: the rows and initial evaluation of a resumed run's checkpoint; rounds.jsonl
        is rewritten to hold exactly those rows (a row written after the checkpoint is dropped)."""
        self.run_dir = Path(run_dir)
        self.meter = meter
        self.model_bytes = model_bytes
        self.config = dict(config)
        self.started = time.perf_counter()
        self.rows, self.initial = restored if restored is not None else ([], None)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if restored is None:
            (self.run_dir / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        write_atomic(self.run_dir / "rounds.jsonl", "".join(json.dumps(row) + "\n" for row in self.rows).encode())
        self.trackers = open_trackers(self.config, self.run_dir)  # track.* settings; none by default

    def initial_evaluation(self, metrics: Mapping[str, float]) -> None:
        self.initial = {"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])}

    def round_done(self, round: int, metrics: Mapping[str, float], round_seconds: float,
                   client_timings: Mapping[str, float] | None = None,
                   extra: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Append the row of ``round`` to rounds.jsonl and return it.

        ``client_timings``: the clients' training, compression and decoding seconds (mean, max).
        ``extra``: further metrics that join the row (the f4_* edge metrics, issue 9).
        """
        row: dict[str, Any] = {"round": round, "accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])}
        row.update(extra or {})
        if self.meter is not None:
            cum = self.meter.totals(upto=round)
            row.update(self.meter.totals(round=round))
            row.update({f"cum_{k}": v for k, v in cum.items()})
            row["cum_bytes_total"] = cum["bytes_up"] + cum["bytes_down"]
            row["cum_message_bytes_total"] = cum["message_bytes_up"] + cum["message_bytes_down"]
        row.update(client_timings or {})
        row["round_seconds"] = round_seconds
        row["wall_seconds"] = time.perf_counter() - self.started
        if self.meter is not None:
            row["clients"] = [{"partition_id": c.pop("client"), **c} for c in self.meter.per_client(round)]
        self.rows.append(row)
        with (self.run_dir / "rounds.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        for tracker in self.trackers:
            tracker.log_round(row)
        return row

    def finish(self, warning: str | None = None) -> dict[str, Any]:
        """Write summary.json (and, when metered, accuracy_vs_bytes.png); return the summary.

        ``warning``: what a reader must know about the finished run (a final accuracy at chance level,
        `fedcomp.records.divergence.chance_warning`), kept in the summary as ``warning``.
        """
        accuracies = [r["accuracy"] for r in self.rows]
        summary: dict[str, Any] = {
            "final_accuracy": accuracies[-1] if accuracies else None,
            "best_accuracy": max(accuracies) if accuracies else None,
            "initial_accuracy": self.initial["accuracy"] if self.initial else None,
            "rounds": len(self.rows),
            "num_clients": int(self.config["num_clients"]),
            "preset": self.config.get("output.preset"),
        }
        if self.meter is not None:
            totals = self.meter.totals()
            bytes_total = totals["bytes_up"] + totals["bytes_down"]
            fedavg_total = self.model_bytes * sum(
                1 for r in self.meter.records if (r.direction == "down" and r.kind in ("train", "evaluate"))
                or (r.kind == "train" and r.payload_bytes))
            summary.update(totals)
            summary.update({
                "bytes_total": bytes_total,
                "message_bytes_total": totals["message_bytes_up"] + totals["message_bytes_down"],
                "fedavg_bytes_total": fedavg_total,
                "compression_ratio": fedavg_total / bytes_total if bytes_total else None,
            })
        summary.update(final_extra_metrics(self.rows))
        if warning:
            summary["warning"] = warning
        summary["wall_seconds"] = time.perf_counter() - self.started
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for tracker in self.trackers:
            tracker.finish(summary)
        if self.meter is not None:
            curve = accuracy_curve(self.rows, summary["initial_accuracy"])
            plot_accuracy_vs_mb({str(summary["preset"]): curve}, self.run_dir / "accuracy_vs_bytes.png")
        return summary
