"""The emulated FantastIC4 edge client: settings, metrics, start-up check, saved models and `fedcomp f4`."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from fedcomp.cli import app
from fedcomp.run.config import resolve
from fedcomp.errors import ConfigError, ModelError
from fedcomp.run.experiment import run_dataset, run_model
from fedcomp.fantastic4.edge import METRICS, EdgeEvaluator
from fedcomp.compress.params import state_arrays
from fedcomp.records.results import RunRecorder
from fedcomp.records.saved_model import load_model, save_final_model, save_model
from fedcomp.local.training import TrainSettings, train

EDGE = {"model": "mlp", "edge.fantastic4": True}


@pytest.fixture(scope="module")
def trained_mlp():
    config = resolve(EDGE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = run_model(config)
    train(model, DataLoader(run_dataset(config).train, batch_size=32, shuffle=True), TrainSettings(epochs=5))
    torch.set_num_threads(threads)
    return model


def test_edge_client_is_off_by_default_and_its_settings_are_checked():
    assert EdgeEvaluator.from_config(resolve({})) is None
    for key, value in [("edge.target", "gpu"), ("edge.act_bits", 1), ("edge.format", "coo"), ("edge.every", 0),
                       ("edge.gamma", -1.0)]:
        with pytest.raises(ConfigError, match=key):
            resolve({key: value})


def test_edge_evaluation_reports_the_four_metrics(trained_mlp):
    config = resolve(EDGE)
    metrics = EdgeEvaluator.from_config(config).evaluate(trained_mlp)
    assert set(metrics) == set(METRICS)
    assert 0.8 < metrics["f4_accuracy"] <= 1.0
    assert metrics["f4_latency_us"] > 0 and metrics["f4_energy_uj"] > 0
    assert isinstance(metrics["f4_model_bytes"], int) and 0 < metrics["f4_model_bytes"] < 4 * 8842
    asic = EdgeEvaluator.from_config(resolve({**EDGE, "edge.target": "asic"})).evaluate(trained_mlp)
    assert asic["f4_energy_uj"] < metrics["f4_energy_uj"]  # the ASIC is the more efficient implementation
    assert asic["f4_accuracy"] == metrics["f4_accuracy"]  # same compiled network


def test_start_up_check_rejects_a_model_the_device_cannot_run():
    config = resolve({"model": "cnn", "edge.fantastic4": True})
    edge = EdgeEvaluator.from_config(config)
    with pytest.raises(ModelError, match=r"layer '0' \(Conv2d\) cannot run on FantastIC4"):
        edge.check(run_model(config))
    EdgeEvaluator.from_config(resolve({**config, "edge.head": True})).check(run_model(config))


def test_fedcomp_run_stops_before_the_simulation_with_the_devices_message(tmp_path):
    result = CliRunner().invoke(app, ["run", "--set", "edge.fantastic4=true", "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, ModelError) and "Conv2d" in str(result.exception)
    assert not (tmp_path / "run").exists()


def test_edge_rounds_every_n_and_the_last():
    edge = EdgeEvaluator.from_config(resolve({**EDGE, "edge.every": 3}))
    assert [r for r in range(0, 11) if edge.due(r, 10)] == [3, 6, 9, 10]


def test_recorder_writes_f4_metrics_per_round_and_their_final_values(tmp_path):
    recorder = RunRecorder(tmp_path, resolve({}), meter=None)
    recorder.round_done(1, {"accuracy": 0.5, "loss": 1.0}, 0.1, {"f4_accuracy": 0.4, "f4_model_bytes": 10})
    recorder.round_done(2, {"accuracy": 0.6, "loss": 0.9}, 0.1)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert rows[0]["f4_accuracy"] == 0.4 and "f4_accuracy" not in rows[1]
    summary = recorder.finish()
    assert summary["f4_accuracy"] == 0.4 and summary["f4_model_bytes"] == 10


def test_saved_model_round_trips_without_pickle(tmp_path, trained_mlp):
    config = resolve({**EDGE, "output.save_model": True})
    save_final_model(tmp_path, trained_mlp, config)
    model, meta = load_model(tmp_path)  # a run folder works as well as the file
    assert meta == {"model": "mlp", "num_classes": 10, "input_shape": [1, 8, 8]}
    for key, value in state_arrays(trained_mlp).items():
        assert np.array_equal(state_arrays(model)[key], value)
    save_final_model(tmp_path / "off", trained_mlp, resolve({}))  # off by default: nothing written
    assert not (tmp_path / "off").exists()
    np.save(tmp_path / "bad.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "bad.npz").write_bytes((tmp_path / "bad.npy").read_bytes())
    with pytest.raises(ModelError, match="not a model saved by fedcomp"):
        load_model(tmp_path / "bad.npz")
    with pytest.raises(ModelError, match="no saved model"):
        load_model(tmp_path / "missing.npz")


def test_f4_command_prints_a_per_layer_table_and_totals(tmp_path, trained_mlp):
    path = save_model(tmp_path / "m.npz", trained_mlp, "mlp", 10, (1, 8, 8))
    result = CliRunner().invoke(app, ["f4", "--model", str(path), "--dataset", "digits", "--target", "asic"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "FantastIC4 accuracy" in lines[0]
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| layer | shape | format | non-zeros")
    assert [row.split("|")[1].strip() for row in table[1:]] == ["1", "3", "5", "**total**"]
    assert all(row.split("|")[3].strip() in ("dense", "csr", "cer", "cser") for row in table[1:-1])
    assert lines[-1].startswith("asic: latency")
    expected = EdgeEvaluator.from_config(resolve({**EDGE, "edge.target": "asic"})).evaluate(trained_mlp)
    assert f"{expected['f4_accuracy']:.4f}" in lines[0] and f"model {expected['f4_model_bytes']} bytes" in lines[-1]


def test_f4_command_rejects_a_file_whose_tensors_do_not_fit_its_model(tmp_path, trained_mlp):
    path = save_model(tmp_path / "m.npz", trained_mlp, "mlp", 3, (1, 8, 8))  # 10-class tensors, 3 classes claimed
    with pytest.raises(ModelError, match="does not hold the tensors of model 'mlp'"):
        CliRunner().invoke(app, ["f4", "--model", str(path), "--dataset", "digits"], catch_exceptions=False)


@pytest.mark.slow
def test_a_run_with_the_edge_client_records_f4_metrics_and_saves_its_model(tmp_path):
    from fedcomp.launch.simulation import run_simulation

    config = resolve({**EDGE, "num_clients": 3, "rounds": 2, "seed": 1, "edge.every": 2, "output.save_model": True})
    summary = run_simulation(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert "f4_accuracy" not in rows[0] and set(METRICS) <= set(rows[1])
    assert all(summary[key] == rows[1][key] for key in METRICS)
    model, _ = load_model(tmp_path / "model.npz")
    assert EdgeEvaluator.from_config(config).evaluate(model) == {key: rows[1][key] for key in METRICS}
