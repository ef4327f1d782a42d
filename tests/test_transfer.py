"""Transfer (issue 19): starting from saved weights, class subsets and resized images, pretraining,
and partial updates that send only their selected tensors in both directions."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clients.client_app import app as client_app
from fedcomp.cli import app
from fedcomp.compress.codec.wire import decode_payload
from fedcomp.compress.compression import SCHEMES
from fedcomp.compress.params import ParamManifest, state_arrays
from fedcomp.data.view import DataView, parse_classes
from fedcomp.errors import ConfigError, DatasetError, ModelError
from fedcomp.exchange.channels import max_payload_bytes, record_payloads
from fedcomp.exchange.protocol import ARRAYS
from fedcomp.exchange.updates import UpdateSettings
from fedcomp.local.partial import select
from fedcomp.models import build_model
from fedcomp.records.saved_model import save_model, save_run_model
from fedcomp.run.config import resolve
from fedcomp.run.experiment import run_dataset, run_model
from fedcomp.run.presets import preset
from strategies.loopback import LoopbackGrid
from strategies.server_app import build_strategy, serve
from flwr.app import Context, RecordDict

TINY = {"model": "cnn_bn", "num_clients": 3, "rounds": 2, "output.checkpoint": False, "client.state": "memory"}


def perturbed(model: torch.nn.Module, seed: int = 7) -> torch.nn.Module:
    """``model`` with every float tensor moved off its seed initialisation, so a load is visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator))
    return model


class RecordingGrid(LoopbackGrid):
    """A loopback grid that keeps every message and reply it delivers (after the wire round trip)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.sent, self.replies = [], []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent += messages
        replies = super().send_and_receive(messages, timeout=timeout)
        self.replies += replies
        return replies


def recorded_run(config: dict) -> RecordingGrid:
    """Run ``config`` over a recording loopback grid (as `run_loopback` does); the grid."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    grid = RecordingGrid(client_app, {100 + i: i for i in range(int(config["num_clients"]))}, config)
    serve(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config)),
          build_strategy)
    return grid


def train_messages(grid: RecordingGrid) -> list:
    return [m for m in grid.sent if m.metadata.message_type == "train"]


def train_replies(grid: RecordingGrid) -> list:
    return [r for r in grid.replies if r.metadata.message_type == "train" and r.has_content()]


# ---- init.weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["npz", "run-folder", "pt", "plugin"])
def test_saved_weights_round_trip_through_init_weights(tmp_path, monkeypatch, form):
    config = resolve(TINY)
    source = perturbed(run_model(config))
    bundle = run_dataset(config)
    if form in ("npz", "run-folder"):
        save_model(tmp_path / "model.npz", source, "cnn_bn", bundle.num_classes, bundle.input_shape)
        reference = str(tmp_path / "model.npz") if form == "npz" else str(tmp_path)
    elif form == "pt":
        reference = str(save_run_model(tmp_path / "w.pt", source, config))
    else:
        (tmp_path / "weights_plugin.py").write_text(
            "import torch\n"
            f"def weights():\n    return torch.load({str(tmp_path / 'w.pt')!r}, weights_only=True)\n")
        save_run_model(tmp_path / "w.pt", source, config)
        monkeypatch.syspath_prepend(str(tmp_path))
        reference = "python:weights_plugin:weights"
    loaded = run_model(resolve(TINY, {"init.weights": reference}))
    for name, value in state_arrays(source).items():
        assert np.array_equal(state_arrays(loaded)[name], value), name


def test_the_first_round_starts_from_exactly_the_loaded_weights(tmp_path, task_identity):
    config = resolve(TINY)
    source = perturbed(run_model(config))
    path = save_run_model(tmp_path / "w.pt", source, config)
    grid = recorded_run(resolve(TINY, {"init.weights": str(path), "rounds": 1, "output.dir": str(tmp_path / "run")}))
    first = train_messages(grid)
    assert len(first) == 3
    for message in first:  # uncompressed FedAvg sends the global model: W_0 is the file's weights
        arrays = message.content[ARRAYS]
        for name, value in state_arrays(source).items():
            assert np.array_equal(arrays[name].numpy(), value), name


def test_a_pickled_object_other_than_tensors_is_refused_with_one_line(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pt"
    torch.save({"0.weight": torch.zeros(1), "trap": Payload()}, path)
    with pytest.raises(ModelError, match="pickled object other than tensors; refused") as err:
        run_model(resolve(TINY, {"init.weights": str(path)}))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content,fragment", [
    (lambda p: torch.save([torch.zeros(1)], p), "is not a state dict"),
    (lambda p: torch.save({"a": 3}, p), "entry 'a' is int, not a tensor"),
    (lambda p: p.write_text("not weights"), "is not a torch state dict file"),
])
def test_a_file_that_is_not_a_state_dict_gives_one_line(tmp_path, content, fragment):
    path = tmp_path / "w.pt"
    content(path)
    with pytest.raises(ModelError, match=fragment) as err:
        run_model(resolve(TINY, {"init.weights": str(path)}))
    assert "\n" not in str(err.value)


def test_a_missing_or_foreign_tensor_is_named(tmp_path):
    cnn = resolve(TINY, {"model": "cnn"})
    path = save_run_model(tmp_path / "cnn.pt", run_model(cnn), cnn)
    with pytest.raises(ModelError, match="cnn.pt has no tensor '1.weight', which the model needs"):
        run_model(resolve(TINY, {"init.weights": str(path)}))  # cnn's weights for cnn_bn: no BatchNorm
    weights = torch.load(path, weights_only=True)
    torch.save({**weights, "extra.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    with pytest.raises(ModelError, match="has tensor 'extra.weight', which the model lacks"):
        run_model(resolve(cnn, {"init.weights": str(tmp_path / "extra.pt")}))
    torch.save({**weights, "0.weight": torch.zeros(16, 1, 5, 5)}, tmp_path / "shape.pt")
    with pytest.raises(ModelError, match=r"'0.weight' is \(16, 1, 5, 5\) in init.weights .* needs \(16, 1, 3, 3\)"):
        run_model(resolve(cnn, {"init.weights": str(tmp_path / "shape.pt")}))


def test_a_wrong_head_size_is_refused_or_replaced_with_reset_head(tmp_path):
    source_config = resolve(TINY, {"data.subset": "0-5"})  # 6 classes
    source = perturbed(run_model(source_config))
    path = save_run_model(tmp_path / "w.pt", source, source_config)
    target = {"data.subset": "6-9", "init.weights": str(path)}  # 4 new classes
    with pytest.raises(ModelError, match=r"'15.weight' is \(6, 64\) .* needs \(4, 64\) .*init.reset_head=true"):
        run_model(resolve(TINY, target))
    model = run_model(resolve(TINY, target, {"init.reset_head": True}))
    fresh = run_model(resolve(TINY, {"data.subset": "6-9"}))  # the seed's initialisation
    head = select(model, list(model.state_dict()), "head")
    assert head == ["15.weight", "15.bias"]
    for name, value in state_arrays(model).items():
        expected = state_arrays(fresh if name in head else source)[name]
        assert np.array_equal(value, expected), name


# ---- data views -----------------------------------------------------------------------------


def test_a_class_subset_is_relabelled_in_the_order_given_and_images_are_resized():
    digits = run_dataset(resolve({}))
    view = run_dataset(resolve({"data.subset": "7,2", "data.resize": 28}))
    assert (view.num_classes, view.input_shape) == (2, (1, 28, 28))
    assert view.train.examples.shape[1:] == (1, 28, 28)
    labels = digits.train.targets
    assert len(view.train) == int(np.sum((labels == 7) | (labels == 2)))
    assert np.array_equal(view.train.targets, np.where(labels[(labels == 7) | (labels == 2)] == 7, 0, 1))
    assert parse_classes("5-7,1") == (5, 6, 7, 1)
    with pytest.raises(ConfigError, match="twice"):
        parse_classes("1,1")
    with pytest.raises(DatasetError, match="names class 12"):
        DataView((3, 12)).apply(digits)


# ---- partial updates ------------------------------------------------------------------------


def _payload_names(record, manifest: ParamManifest) -> set[str]:
    if not len(record.keys()):
        return set()
    return {t.name for payload in record_payloads(record, max_payload_bytes(manifest))
            for t in decode_payload(payload, manifest).tensors}


def test_partial_runs_send_only_the_selected_tensors_both_ways(tmp_path, task_identity):
    config = resolve(preset("fsfl-partial"), TINY, {"rounds": 3, "output.dir": str(tmp_path)})
    model = run_model(config)
    settings = UpdateSettings.from_config(config)
    manifest = settings.manifest(model)
    selected = set(settings.sent_names(model, manifest))
    assert any(n.endswith("running_var") for n in selected) and "15.weight" in selected
    assert "4.weight" not in selected  # a conv's weights stay frozen
    grid = recorded_run(config)
    down = [_payload_names(m.content[ARRAYS], manifest) for m in train_messages(grid)]
    up = [_payload_names(r.content[ARRAYS], manifest) for r in train_replies(grid)]
    assert len(up) == 9 and all(names and names <= selected for names in up)
    assert not down[0] and len(down) == 9  # round 1: W_0 is built from the seed, nothing sent
    assert all(names and names <= selected for names in down[3:])


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s not in ("dense",)])
def test_partial_groups_combine_with_every_quantizer_and_error_feedback(tmp_path, task_identity, scheme):
    config = resolve(TINY, {"up.scheme": scheme, "up.error_feedback": True, "down.scheme": scheme,
                            "down.error_feedback": True, "partial.groups": "bn,bias,head", "rounds": 2,
                            "output.dir": str(tmp_path)})
    if scheme.endswith("deepcabac") or scheme == "nnc":
        pytest.importorskip("nncodec")
    grid = recorded_run(config)
    model = run_model(config)
    manifest = UpdateSettings.from_config(config).manifest(model)
    selected = set(select(model, manifest.names, "bn,bias,head"))
    replies = [_payload_names(r.content[ARRAYS], manifest) for r in train_replies(grid)]
    assert len(replies) == 6 and all(names <= selected for names in replies)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and rows[-1]["bytes_down"] > 0


# ---- pretrain, then fine-tune ---------------------------------------------------------------


def test_pretrain_then_a_partial_run_works_end_to_end(tmp_path, task_identity, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["pretrain", "--set", "model=cnn_bn", "--set", "data.subset=0-4",
                                      "--epochs", "2", "--out", "source.pt"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("epoch   1") and "written to source.pt" in lines[-1]
    source_accuracy = float(lines[-2].split("test acc ")[1])
    assert source_accuracy > 0.5  # 5 classes: chance is 0.2
    from strategies.loopback import run_loopback

    config = resolve(preset("fsfl-partial"), TINY, {"data.subset": "5-9", "init.weights": "source.pt",
                                                    "init.reset_head": True, "output.dir": str(tmp_path / "run")})
    summary = json.loads((run_loopback(config, client_app) / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["bytes_total"] > 0
    dense = ParamManifest.from_model(build_model("cnn_bn", 5, (1, 8, 8))).dense_bytes
    assert summary["bytes_total"] < dense  # two rounds both ways cost less than one dense model


def test_pretrain_refuses_a_bad_epoch_count(tmp_path):
    from fedcomp.cli import pretrain_command

    with pytest.raises(ConfigError, match="--epochs must be at least 1"):
        pretrain_command(out=tmp_path / "x.pt", preset_names=["default"], config_file=None, assignments=[], epochs=0)


def test_a_malformed_class_subset_is_refused_when_the_settings_are_read():
    with pytest.raises(ConfigError, match="setting 'data.subset' must be distinct class ids or ranges"):
        resolve({"data.subset": "5-x"})
