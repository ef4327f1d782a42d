"""A run that diverges stops with one line naming the round and keeps its last good checkpoint (issue 18).

The real ServerApp code (`serve`) and ClientApp over the loopback grid, no Ray; the clients are
wrapped to fail, or to send a legal but enormous update, from a given round on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, MessageType, RecordDict

from clients.client_app import app as client_app
from fedcomp.compress.codec.wire import encode_payload
from fedcomp.compress.codec.base import get_codec
from fedcomp.compress.params import ParamManifest
from fedcomp.compress.quant.tensor import float32_tensor
from fedcomp.errors import DivergedError
from fedcomp.compress.compression import decompress
from fedcomp.exchange.channels import payload_record, record_payloads
from fedcomp.exchange.protocol import ARRAYS, CONFIG, SERVER_ROUND
from fedcomp.records import checkpoint
from fedcomp.records.results import DIVERGED, read_diverged
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
