"""TensorBoard and MLflow trackers: what RunRecorder writes to rounds.jsonl/summary.json, they hold too."""

import json

import pytest

from fedcomp.records import trackers
from fedcomp.run.config import resolve
from fedcomp.errors import ConfigError
from fedcomp.records.results import read_rounds
from runfiles import write_run

pytest.importorskip("tensorboard", reason="the `track` extra is not installed")
pytest.importorskip("mlflow", reason="the `track` extra is not installed")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tracked")
    summary = write_run(run_dir, {"track.tensorboard": True, "track.mlflow": True, "lr": 0.07},
                        [0.4, 0.7, 0.8], 1500, 6000)
    return run_dir, summary, read_rounds(run_dir)


def test_tensorboard_has_config_rounds_and_summary(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, summary, rows = tracked_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("round/accuracy")] == [
        (r["round"], pytest.approx(r["accuracy"])) for r in rows]
    assert [e.value for e in events.Scalars("round/cum_bytes_total")] == [r["cum_bytes_total"] for r in rows]
    assert [e.step for e in events.Scalars("by_bytes/accuracy")] == [r["cum_bytes_total"] for r in rows]
    assert events.Scalars("summary/bytes_total")[0].value == summary["bytes_total"]
    texts = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}
    assert "| lr | 0.07 |" in texts["config/text_summary"]
    assert json.loads(texts["summary/text_summary"].strip("`\n")) == summary


def test_mlflow_has_params_metrics_and_summary(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, summary, rows = tracked_run
    client = MlflowClient((run_dir / "mlruns").as_uri())
    run = client.search_runs([client.get_experiment_by_name("fedcomp").experiment_id])[0]
    assert run.data.params["lr"] == "0.07" and run.data.params["num_clients"] == "3"
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert sorted((m.step, m.value) for m in history) == [(r["round"], r["accuracy"]) for r in rows]
    assert run.data.metrics["summary.bytes_total"] == summary["bytes_total"]
    assert run.info.status == "FINISHED"
    artifact = client.download_artifacts(run.info.run_id, "summary.json", str(run_dir))
    assert json.loads(open(artifact).read()) == summary


def test_trackers_are_off_by_default_and_a_missing_package_is_one_clear_error(monkeypatch, tmp_path):
    assert trackers.enabled(resolve({})) == []
    write_run(tmp_path / "plain", {}, [0.5], 10, 10)
    assert not (tmp_path / "plain" / "tensorboard").exists() and not (tmp_path / "plain" / "mlruns").exists()
    monkeypatch.setitem(trackers.TRACKERS, "mlflow", (trackers.MlflowTracker, ("no_such_module_xyz",)))
    with pytest.raises(ConfigError, match="track.mlflow needs .*no_such_module_xyz.*fedcomp\\[track\\]"):
        trackers.enabled(resolve({"track.mlflow": True}))
