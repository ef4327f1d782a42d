"""A run that diverges stops with one line naming the round and keeps its last good checkpoint (issue 18).

The real ServerApp code (`serve`) and ClientApp over the loopback grid, no Ray; the clients are
wrapped to fail, or to send a legal but enormous update, from a given round on. A run that finishes
at chance accuracy is not a divergence: it finishes and says so.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from flwr.app import Context, MessageType, RecordDict

from clients.client_app import app as client_app
from fedcomp import cli
from fedcomp.compress.codec.wire import encode_payload
from fedcomp.compress.codec.base import get_codec
from fedcomp.compress.params import ParamManifest
from fedcomp.compress.quant.tensor import float32_tensor
from fedcomp.errors import DivergedError
from fedcomp.compress.compression import decompress
from fedcomp.exchange.channels import payload_record, record_payloads
from fedcomp.exchange.protocol import ARRAYS, CONFIG, SERVER_ROUND
from fedcomp.records import checkpoint
from fedcomp.records.results import DIVERGED, read_diverged, read_rounds
from fedcomp.run.config import resolve
from fedcomp.run.experiment import run_model
from strategies.loopback import LoopbackGrid
from strategies.server_app import build_strategy, serve

QUICK = {"num_clients": 3, "rounds": 8, "up.scheme": "uniform-ans", "up.qp": -20}


def run(tmp_path, settings: dict, client) -> None:
    config = resolve({**QUICK, **settings, "output.dir": str(tmp_path)})
    grid = LoopbackGrid(client, {100 + i: i for i in range(3)}, config)
    serve(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config)),
          build_strategy)


def from_round(first_bad: int, bad):
    """The real ClientApp, whose training replies from ``first_bad`` on are replaced by ``bad(reply)``."""
    def app(msg, context):
        reply = client_app(msg, context)
        late = msg.metadata.message_type == MessageType.TRAIN and msg.content[CONFIG][SERVER_ROUND] >= first_bad
        return bad(reply) if late else reply
    return app


def fail(reply):
    raise RuntimeError("cannot quantize non-finite values (NaN or inf in the update)")


def enormous(manifest: ParamManifest, value: float = 3e38):
    """Replace a reply's update by a well-formed float32 one whose every value is ``value`` (3e38: finite;
    10 x it is not)."""
    def bad(reply):
        sent = decompress(record_payloads(reply.content[ARRAYS], 1 << 30)[0], manifest)
        tensors = [float32_tensor(n, np.full(v.shape, value, np.float32)) for n, v in sent.items()]
        reply.content[ARRAYS] = payload_record([encode_payload(tensors, manifest, get_codec("float32"))])
        return reply
    return bad


def assert_stopped(tmp_path, err, round_: int, reason: str, last_good: int) -> None:
    assert err.value.round == round_ and f"round {round_}" in str(err.value) and reason in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "summary.json").exists()  # never a finished run
    assert read_diverged(tmp_path).round == round_ and json.loads((tmp_path / DIVERGED).read_text())["reason"]
    assert checkpoint.load(tmp_path).round == last_good
    assert [row["round"] for row in read_rounds(tmp_path)] == list(range(1, round_))  # none of the round it stopped in


def test_a_run_whose_clients_all_fail_stops_and_keeps_the_last_good_checkpoint(tmp_path, task_identity) -> None:
    with pytest.raises(DivergedError) as err:
        run(tmp_path, {"server.max_failed_rounds": 3}, from_round(3, fail))
    assert_stopped(tmp_path, err, 5, "every sampled client failed in the last 3 rounds", 2)


def test_a_run_whose_global_model_turns_non_finite_stops(tmp_path, task_identity) -> None:
    manifest = ParamManifest.from_model(run_model(resolve(QUICK)))
    with pytest.raises(DivergedError) as err:
        run(tmp_path, {"server.lr": 10.0}, from_round(3, enormous(manifest)))
    assert_stopped(tmp_path, err, 3, "global model is non-finite", 2)


def test_a_bidirectional_run_whose_update_leaves_the_grid_stops(tmp_path, task_identity) -> None:
    """A finite aggregated update too large for the int32 grid counts (1e12 / step) is a divergence, not a crash."""
    manifest = ParamManifest.from_model(run_model(resolve(QUICK)))
    both_ways = {"down.scheme": "uniform-ans", "down.qp": -20, "down.error_feedback": True}
    with pytest.raises(DivergedError) as err:
        run(tmp_path, both_ways, from_round(3, enormous(manifest, 1e12)))
    assert_stopped(tmp_path, err, 3, "cannot go on the grid", 2)


def test_a_run_whose_finite_model_has_an_exploding_loss_stops(tmp_path, task_identity) -> None:
    """Every client adds 0.5 to every weight from round 3: the model stays finite, its central test loss goes from
    3.1 (round 0) to about 4e4 at accuracy 0.10; the default server.max_loss_ratio (1000) stops it there."""
    manifest = ParamManifest.from_model(run_model(resolve(QUICK)))
    with pytest.raises(DivergedError) as err:
        run(tmp_path, {}, from_round(3, enormous(manifest, 0.5)))
    assert_stopped(tmp_path, err, 3, "central test loss", 2)
    assert "times the initial model's" in str(err.value)


def test_a_run_that_finishes_at_chance_accuracy_finishes_and_says_so(tmp_path, monkeypatch, task_identity) -> None:
    """The same run with the loss rule off finishes at accuracy 0.10: `fedcomp run`'s summary warns, and
    summary.json keeps the warning."""
    manifest = ParamManifest.from_model(run_model(resolve(QUICK)))
    out = io.StringIO()
    monkeypatch.setattr(cli.console, "file", out)

    def engine(config, run_dir, on_round):
        run(run_dir, {**config, "rounds": 4, "server.max_loss_ratio": 0.0}, from_round(3, enormous(manifest, 0.5)))
        return json.loads((run_dir / "summary.json").read_text())

    summary = cli.execute(resolve(QUICK), tmp_path, engine)
    warning = "final accuracy 0.100 is chance level for 10 classes: the model did not learn"
    assert summary["final_accuracy"] == pytest.approx(0.1) and summary["warning"] == warning
    assert f"warning: {warning}" in out.getvalue().splitlines()
    assert read_diverged(tmp_path) is None and checkpoint.load(tmp_path).round == 4
