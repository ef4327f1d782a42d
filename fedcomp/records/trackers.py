"""Optional experiment trackers: TensorBoard event files and an MLflow store.

A tracker is switched on by its setting (``track.tensorboard``, ``track.mlflow``) and gets
three calls from `fedcomp.records.results.RunRecorder`: the run's configuration when it opens, each
round's row, and the final summary. Trackers are chosen by name from `TRACKERS`; their
packages come with the ``track`` extra (``pip install 'fedcomp[track]'``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from fedcomp.errors import ConfigError
from fedcomp.settings import Setting


class Tracker(Protocol):
    """What `RunRecorder` calls on every tracker that is switched on."""

    def log_round(self, row: Mapping[str, Any]) -> None: ...

    def finish(self, summary: Mapping[str, Any]) -> None: ...


def scalars(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of a round row or summary (lists such as per-client rows left out)."""
    return {f"{prefix}{k}": float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round"}


def _config_markdown(config: Mapping[str, Any]) -> str:
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in sorted(config.items()))


class TensorBoardTracker:
    """Event files in ``<run folder>/tensorboard``: the config as text, metrics per round, the summary.

    Besides ``round/<metric>`` (step = round), accuracy is also logged with step = cumulative
    bytes (``by_bytes/accuracy``), so TensorBoard draws accuracy against transmitted data.
    """

    def __init__(self, config: Mapping[str, Any], run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", _config_markdown(config), 0)

    def log_round(self, row: Mapping[str, Any]) -> None:
        step = int(row["round"])
        for key, value in scalars(row).items():
            self.writer.add_scalar(f"round/{key}", value, step)
        if "cum_bytes_total" in row:
            self.writer.add_scalar("by_bytes/accuracy", float(row["accuracy"]), int(row["cum_bytes_total"]))
        self.writer.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(dict(summary), indent=2) + "\n```", 0)
        for key, value in scalars(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, int(summary.get("rounds") or 0))
        self.writer.close()


class MlflowTracker:
    """One MLflow run per fedcomp run: settings as params, metrics per round (step = round), summary.

    The store is ``track.mlflow_uri``, by default a local file store ``<run folder>/mlruns``
    (MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE=true`` to keep using file stores; this
    tracker sets it when the URI is a file store and the variable is unset).
    """

    BATCH = 100  # MLflow's log_batch limit on params

    def __init__(self, config: Mapping[str, Any], run_dir: Path) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = str(config["track.mlflow_uri"]) or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = str(config["track.experiment"])
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name)
            except Exception:  # a concurrent run of the same sweep created it first
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        params = [Param(k, str(v)) for k, v in sorted(config.items())]
        for i in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + self.BATCH])
        self.client.log_dict(self.run_id, dict(config), "config.json")

    def log_round(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(row["round"])
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars(row).items()])

    def finish(self, summary: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in scalars(summary, "summary.").items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.log_dict(self.run_id, dict(summary), "summary.json")
        self.client.set_terminated(self.run_id)


TRACKERS: dict[str, tuple[Callable[[Mapping[str, Any], Path], Tracker], tuple[str, ...]]] = {
    "tensorboard": (TensorBoardTracker, ("tensorboard",)),
    "mlflow": (MlflowTracker, ("mlflow",)),
}

#: ``track.<name>`` switches a tracker of `TRACKERS` on; the others configure MLflow's.
SETTINGS: dict[str, Setting] = {
    "track.tensorboard": Setting(False, "write TensorBoard event files to <run folder>/tensorboard"),
    "track.mlflow": Setting(False, "log config, per-round metrics and summary to MLflow (track.mlflow_uri)"),
    "track.mlflow_uri": Setting("", "MLflow tracking URI; empty means a local file store <run folder>/mlruns"),
    "track.experiment": Setting("fedcomp", "MLflow experiment name"),
}


def enabled(config: Mapping[str, Any]) -> list[str]:
    """The trackers switched on in ``config``; raise ConfigError when one's package is missing."""
    names = [name for name in TRACKERS if config.get(f"track.{name}")]
    for name in names:
        missing = [m for m in TRACKERS[name][1] if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"track.{name} needs the package(s) {', '.join(missing)}: "
                              "pip install 'fedcomp[track]'")
    return names


def open_trackers(config: Mapping[str, Any], run_dir: Path) -> list[Tracker]:
    """One opened tracker per ``track.<name>`` setting that is on."""
    return [TRACKERS[name][0](config, run_dir) for name in enabled(config)]
