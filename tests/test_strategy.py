"""FedAvg's hooks with real Flower messages and the real ClientApp, through a loopback grid (no Ray)."""

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from clients.client_app import app as client_app
from fedcomp.run.config import resolve
from fedcomp.run.experiment import client_indices, run_model
from fedcomp.records.meter import TransferMeter
from fedcomp.compress.params import ParamManifest, state_arrays
from strategies.loopback import LoopbackGrid
from fedcomp.exchange.channels import DenseChannel, dense_record, record_tensors
from strategies.fedavg import FedAvg
from strategies.sampling import Sampler

NODES = {9_000_000_017: 2, 1_234: 0, 77_777_777: 1}  # node id -> partition id, deliberately unordered


@pytest.fixture
def setup(task_identity):
    config = resolve({"num_clients": 3, "rounds": 2})
    model = run_model(config)
    manifest = ParamManifest.from_model(model)
    grid = LoopbackGrid(client_app, NODES, config)
    strategy = FedAvg(manifest, sampler=Sampler(fraction_train=1.0, min_train_nodes=2, seed=0), meter=TransferMeter())
    return config, model, manifest, grid, strategy


def npy_size(shape) -> int:
    """A float32 .npy blob: its header is padded to 128 bytes for these small shapes."""
    return 128 + 4 * int(np.prod(shape))


def test_train_round_is_metered_exactly(setup):
    config, model, manifest, grid, strategy = setup
    arrays = dense_record(state_arrays(model))
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    new_arrays, metrics = strategy.aggregate_train(1, replies)

    expected_payload = sum(npy_size(t.shape) for t in manifest.tensors)
    train = [r for r in strategy.meter.records if r.kind == "train"]
    assert len(train) == 2 * len(NODES)
    for rec in train:
        assert rec.payload_bytes == expected_payload
        assert rec.dense_bytes == manifest.dense_bytes == 4 * sum(p.numel() for p in model.parameters())
        assert rec.payload_bytes - rec.dense_bytes == 128 * len(manifest)  # only the .npy headers on top
        node = next(n for n, pid in NODES.items() if pid == rec.client)  # the meter counts by partition
        moved = (grid.bytes_down if rec.direction == "down" else grid.bytes_up)[node]
        setup_bytes = sum(r.message_bytes for r in strategy.meter.select(round=0, direction=rec.direction,
                                                                         client=rec.client))
        assert rec.message_bytes == moved - setup_bytes  # what the loopback really serialised
        assert rec.message_bytes > rec.payload_bytes
    totals = strategy.meter.totals(round=1)
    assert totals["bytes_up"] == sum(c["bytes_up"] for c in strategy.meter.per_client(1)) == 3 * expected_payload
    assert metrics["num-examples"] == sum(len(client_indices(config, p)) for p in NODES.values())
    assert set(new_arrays.keys()) == set(manifest.names)


def test_aggregate_is_the_example_weighted_mean(setup):
    config, model, manifest, grid, strategy = setup
    arrays = dense_record(state_arrays(model))
    replies = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    local = {r.metadata.src_node_id: (record_tensors(r.content["arrays"]), r.content["metrics"]["num-examples"])
             for r in replies}
    new = record_tensors(strategy.aggregate_train(1, replies)[0])
    total = sum(n for _, n in local.values())
    for name in manifest.names:
        expected = sum(t[name].astype(np.float64) * n for t, n in local.values()) / total
        np.testing.assert_allclose(new[name], expected, rtol=1e-6, atol=1e-7)


def test_sampling_is_seeded_by_partition_not_node_id(setup):
    config, model, manifest, grid, strategy = setup
    strategy.sampler.fraction_train = 0.5
    strategy.sampler.min_train_nodes = 1
    arrays = dense_record(state_arrays(model))
    chosen = [[NODES[m.metadata.dst_node_id] for m in strategy.configure_train(r, arrays, ConfigRecord(), grid)]
              for r in (1, 2, 3, 4)]
    other = FedAvg(manifest, sampler=Sampler(fraction_train=0.5, min_train_nodes=1, seed=0))
    renamed = {node * 3 + 1: pid for node, pid in NODES.items()}  # different node ids, same partitions
    grid2 = LoopbackGrid(client_app, renamed, config)
    again = [[renamed[m.metadata.dst_node_id] for m in other.configure_train(r, arrays, ConfigRecord(), grid2)]
             for r in (1, 2, 3, 4)]
    assert chosen == again
    assert all(len(c) == 1 for c in chosen)


def test_a_reply_that_does_not_fit_the_model_is_dropped(setup):
    config, model, manifest, grid, strategy = setup
    bad_node = 1_234

    def wrong_shape(reply: Message) -> Message:
        arrays = reply.content["arrays"]
        name = manifest.names[0]
        tensors = record_tensors(arrays)
        tensors[name] = np.zeros((3, 3), np.float32)
        record = DenseChannel().encode(tensors)[0].record
        return Message(RecordDict({"arrays": record, "metrics": reply.content["metrics"]}), reply_to=reply_to_of(reply))

    sent = {}

    def reply_to_of(reply):
        return sent[reply.metadata.src_node_id]

    messages = list(strategy.configure_train(1, dense_record(state_arrays(model)), ConfigRecord(), grid))
    sent.update({m.metadata.dst_node_id: m for m in messages})
    grid.tamper[bad_node] = wrong_shape
    replies = grid.send_and_receive(messages)
    new_arrays, metrics = strategy.aggregate_train(1, replies)
    good = [p for n, p in NODES.items() if n != bad_node]
    assert metrics["num-examples"] == sum(len(client_indices(config, p)) for p in good)
    assert len(strategy.meter.select(round=1, direction="up")) == 3  # it was still metered


def test_malformed_dense_records_raise_payload_error():
    from fedcomp.errors import PayloadError

    manifest = ParamManifest.from_arrays({"w": np.zeros((2, 3), np.float32)})
    channel = DenseChannel()
    with pytest.raises(PayloadError, match="missing"):
        channel.decode(ArrayRecord(), manifest)
    with pytest.raises(PayloadError, match="expected float32"):
        channel.decode(channel.encode({"w": np.zeros((3, 2), np.float32)})[0].record, manifest)
    with pytest.raises(PayloadError, match="expected float32"):
        channel.decode(ArrayRecord({"w": Array(np.zeros((2, 3), np.float64))}), manifest)

    def lying_npy(shape, data_bytes: int) -> ArrayRecord:
        """The Array's own shape is right; the .npy header inside its bytes says otherwise."""
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
        data = header.getvalue() + b"\0" * data_bytes
        return ArrayRecord({"w": Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=data)})

    for shape, size in [((10**11,), 24), ((3, 3), 36), ((6,), 24), ((2, 3), 10), ((2, 3), 28)]:
        with pytest.raises(PayloadError, match="holds float32"):  # rejected before np.load would allocate
            channel.decode(lying_npy(shape, size), manifest)
    assert channel.decode(lying_npy((2, 3), 24), manifest)["w"].shape == (2, 3)


def test_setup_query_learns_partitions(setup):
    config, model, manifest, grid, strategy = setup
    assert strategy.sampler.discover(grid, strategy.meter) == NODES
    setup_records = strategy.meter.select(round=0)
    assert len(setup_records) == 2 * len(NODES)
    assert all(r.payload_bytes == 0 and r.message_bytes > 0 for r in setup_records)


def test_metrics_are_example_weighted():
    from strategies.replies import ClientResult, weighted_metrics

    received = [ClientResult(0, 10, {}, MetricRecord({"loss": 1.0, "num-examples": 10})),
                ClientResult(1, 30, {}, MetricRecord({"loss": 3.0, "num-examples": 30}))]
    out = weighted_metrics(received)
    assert out["loss"] == pytest.approx(2.5)
    assert out["num-examples"] == 40


def test_federated_evaluation_is_metered_and_weighted(setup):
    config, model, manifest, grid, strategy = setup
    strategy.sampler.fraction_evaluate = 1.0
    arrays = dense_record(state_arrays(model))
    replies = grid.send_and_receive(strategy.configure_evaluate(1, arrays, ConfigRecord(), grid))
    metrics = strategy.aggregate_evaluate(1, replies)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["num-examples"] == sum(len(client_indices(config, p)) for p in NODES.values())
    down = strategy.meter.select(round=1, direction="down")
    up = strategy.meter.select(round=1, direction="up")
    assert {r.kind for r in down + up} == {"evaluate"} and len(down) == len(up) == 3
    assert all(r.payload_bytes == sum(npy_size(t.shape) for t in manifest.tensors) for r in down)
    assert all(r.payload_bytes == 0 and r.dense_bytes == 0 and r.message_bytes > 0 for r in up)


def test_a_run_no_node_can_join_fails_with_the_nodes_reason(task_identity):
    from fedcomp.errors import ConfigError

    config = resolve({"num_clients": 5})  # the nodes below say num-partitions=3
    strategy = FedAvg(ParamManifest.from_model(run_model(config)))
    grid = LoopbackGrid(client_app, NODES, config)
    with pytest.raises(ConfigError, match="num-partitions=3 but the run has num_clients=5"):
        strategy.sampler.discover(grid, strategy.meter)
    assert len(strategy.meter.select(round=0, direction="up")) == 3  # error replies are messages too


@pytest.mark.parametrize("shape", ["no arrays", "nan count", "negative count", "fractional count", "nan tensor",
                                   "no metrics", "array record of junk", "extra record", "extra array record",
                                   "metrics of the wrong type", "arrays of the wrong type", "text count"])
def test_malformed_replies_of_every_shape_are_dropped(setup, shape, caplog):
    config, model, manifest, grid, strategy = setup
    bad_node = 1_234
    sent = {}

    def malformed(reply: Message) -> Message:
        if "arrays" not in reply.content:  # the setup query's answer
            return reply
        metrics = MetricRecord(dict(reply.content["metrics"]))
        arrays = reply.content["arrays"]
        if shape == "no arrays":
            content = RecordDict({"metrics": metrics})
        elif shape == "no metrics":
            content = RecordDict({"arrays": arrays})
        elif shape == "array record of junk":
            content = RecordDict({"arrays": ArrayRecord({"x": Array(np.zeros(3, np.int8))}), "metrics": metrics})
        elif shape == "extra record":
            content = RecordDict({"arrays": arrays, "metrics": metrics, "config": ConfigRecord({"x": 1})})
        elif shape == "extra array record":
            content = RecordDict({"arrays": arrays, "metrics": metrics, "more": arrays})
        elif shape == "metrics of the wrong type":
            content = RecordDict({"arrays": arrays, "metrics": ConfigRecord(dict(metrics))})
        elif shape == "arrays of the wrong type":
            content = RecordDict({"arrays": ConfigRecord({"w": b"junk"}), "metrics": metrics})
        elif shape == "text count":
            content = RecordDict({"arrays": arrays, "metrics": ConfigRecord({**dict(metrics), "num-examples": "9"})})
        elif shape == "nan tensor":
            tensors = record_tensors(arrays)
            tensors[manifest.names[0]] = np.full(tensors[manifest.names[0]].shape, np.nan, np.float32)
            content = RecordDict({"arrays": dense_record(tensors), "metrics": metrics})
        else:
            metrics["num-examples"] = {"nan count": float("nan"), "negative count": -5, "fractional count": 3.5}[shape]
            content = RecordDict({"arrays": arrays, "metrics": metrics})
        return Message(content, reply_to=sent[reply.metadata.src_node_id])

    messages = list(strategy.configure_train(1, dense_record(state_arrays(model)), ConfigRecord(), grid))
    sent.update({m.metadata.dst_node_id: m for m in messages})
    grid.tamper[bad_node] = malformed
    with caplog.at_level("WARNING"):
        new_arrays, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    dropped = f"node {bad_node} (partition {NODES[bad_node]}) failed: dropped its reply"
    assert caplog.text.count("failed: dropped its reply") == caplog.text.count(dropped) == 1
    good = [p for n, p in NODES.items() if n != bad_node]
    assert metrics["num-examples"] == sum(len(client_indices(config, p)) for p in good)
    assert all(np.all(np.isfinite(v)) for v in record_tensors(new_arrays).values())
    assert len(strategy.meter.select(round=1, direction="up")) == 3


def test_a_bug_in_a_hook_raises_instead_of_failing_the_client(setup, caplog):
    """Only a payload or a reply that does not fit is the client's failure; a server bug is not caught."""
    config, model, manifest, grid, strategy = setup

    class Buggy(FedAvg):
        def decode_reply(self, record):
            return {"missing": super().decode_reply(record)["no such tensor"]}  # KeyError: the server's bug

    buggy = Buggy(manifest, sampler=Sampler(seed=0))
    arrays = dense_record(state_arrays(model))
    replies = grid.send_and_receive(buggy.configure_train(1, arrays, ConfigRecord(), grid))
    with caplog.at_level("WARNING"), pytest.raises(KeyError, match="no such tensor"):
        buggy.aggregate_train(1, replies)
    assert "failed" not in caplog.text


def test_a_reply_above_the_norm_bound_is_refused_as_the_clients_failure(setup, caplog):
    from strategies.replies import UpdateBound

    config, model, manifest, grid, strategy = setup
    bounded = FedAvg(manifest, sampler=Sampler(seed=0), bound=UpdateBound(1e-6, "refuse"))
    arrays = dense_record(state_arrays(model))
    replies = grid.send_and_receive(bounded.configure_train(1, arrays, ConfigRecord(), grid))
    with caplog.at_level("WARNING"):
        new_arrays, metrics = bounded.aggregate_train(1, replies)
    assert new_arrays is None and metrics is None  # every update is far above 1e-6: no usable reply
    assert caplog.text.count("failed: dropped its reply: ReplyError: its update's L2 norm") == len(NODES)


def test_the_update_sink_sees_every_aggregated_round_whatever_aggregate_does(setup):
    """on_client_update is called by the round loop, not by aggregate: an override cannot forget it."""
    config, model, manifest, grid, strategy = setup
    seen = {}

    class FirstOnly(FedAvg):
        def aggregate(self, server_round, results):
            return results[0].tensors

    first = FirstOnly(manifest, sampler=Sampler(seed=0), on_client_update=lambda r, u: seen.update({r: u}))
    arrays = dense_record(state_arrays(model))
    replies = grid.send_and_receive(first.configure_train(1, arrays, ConfigRecord(), grid))
    replies = list(replies)
    new_arrays, _ = first.aggregate_train(1, replies)
    assert sorted(seen[1]) == sorted(NODES.values())
    local = DenseChannel().decode(next(r for r in replies if NODES[r.metadata.src_node_id] == 0).content["arrays"],
                                  manifest)
    base = record_tensors(arrays)
    assert all(np.array_equal(seen[1][0][k], local[k] - base[k]) for k in manifest.names)
    assert all(np.array_equal(record_tensors(new_arrays)[k], local[k]) for k in manifest.names)
