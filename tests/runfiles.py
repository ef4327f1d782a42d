"""Finished run folders written by fedcomp's own `RunRecorder` and `TransferMeter`, without a simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from fedcomp.run.config import resolve
from fedcomp.records.meter import TransferMeter
from fedcomp.records.results import RunRecorder


def write_run(run_dir: Path, settings: Mapping[str, Any], accuracies: Sequence[float], bytes_up: int,
              bytes_down: int, clients: int = 3, warning: str | None = None) -> dict[str, Any]:
    """A run of ``len(accuracies)`` rounds in which every client sends ``bytes_up`` and receives ``bytes_down``
    (``warning``: what the summary says of the finished run, as the server writes it)."""
    config = resolve({"num_clients": clients, "rounds": len(accuracies), **settings, "output.dir": str(run_dir)})
    meter = TransferMeter()
    recorder = RunRecorder(run_dir, config, meter)
    recorder.initial_evaluation({"accuracy": 0.1, "loss": 2.3})
    for rnd, acc in enumerate(accuracies, start=1):
        for client in range(clients):
            meter.record(rnd, "down", client, "train", bytes_down, bytes_down + 50, 4000)
            meter.record(rnd, "up", client, "train", bytes_up + client, bytes_up + client + 50, 4000)
        recorder.round_done(rnd, {"accuracy": acc, "loss": 1.0 - acc}, 0.1)
    return recorder.finish(warning)
