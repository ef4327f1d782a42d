"""Compressed FedAvg through the real ClientApp and real Flower messages, over the loopback grid (no Ray)."""

import logging

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedcomp.exchange.client_state import MEMORY_KEY, MemoryState
from clients.client_app import app as client_app
from fedcomp.exchange.channels import payload_record, record_payloads
from fedcomp.compress.compression import decompress
from fedcomp.run.config import resolve
from fedcomp.run.experiment import run_model
from fedcomp.compress.params import ParamManifest, state_arrays
from fedcomp.local.scaling import is_scale
from fedcomp.exchange.updates import UpdateSettings
from fedcomp.exchange.catchup import settings_grid
from strategies.loopback import LoopbackGrid
from strategies.differential import DifferentialFedAvg
from strategies.server_app import build_strategy

BIDIR = {"up.scheme": "topk-uniform-ans", "up.fraction": 0.02, "down.scheme": "topk-uniform-ans",
         "down.fraction": 0.03}


def make_run(settings: dict, clients: int = 4):
    config = resolve({"num_clients": clients, **settings})
    model = run_model(config)
    strategy = build_strategy(config, model)
    grid = LoopbackGrid(client_app, {5000 + 7 * i: i for i in range(clients)}, config)
    return config, model, strategy, grid, strategy.initial_arrays(state_arrays(model))


def one_round(strategy, grid, arrays, server_round):
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    new, metrics = strategy.aggregate_train(server_round, replies)
    return messages, replies, (new if new is not None else arrays), metrics


def client_state(grid, node) -> dict[str, np.ndarray]:
    return MemoryState(grid.contexts[node].state).load(0)


def client_global(grid, node, config, model) -> dict[str, np.ndarray]:
    """The model a client holds: W_0 plus its counts on the run's grid."""
    counts = {k[len("counts/"):]: v for k, v in client_state(grid, node).items() if k.startswith("counts/")}
    return settings_grid(UpdateSettings.from_config(config), model).materialize(counts)


def partition(grid, node) -> int:
    return grid.contexts[node].node_config["partition-id"]


@pytest.mark.parametrize("history", [20, 1])
def test_sampled_clients_hold_the_server_model_bit_for_bit(task_identity, history):
    """fraction 0.3 over many rounds: every participant decodes exactly W_t from one message (the count
    differences since its version, the folded grid updates replayed, or the counts since W_0 when the
    server no longer remembers its version)."""
    config, model, strategy, grid, arrays = make_run(
        {**BIDIR, "fraction": 0.3, "sync.history": history, "fsfl.mode": "compensate"}, clients=10)
    assert isinstance(strategy, DifferentialFedAvg)
    kinds = set()
    for server_round in range(1, 13):
        server_global = {k: v.numpy() for k, v in arrays.items()}
        messages, replies, arrays, _ = one_round(strategy, grid, arrays, server_round)
        assert not any(r.has_error() for r in replies), [r.error.reason for r in replies if r.has_error()]
        for msg in messages:
            node = msg.metadata.dst_node_id
            held = client_global(grid, node, config, model)
            assert held.keys() == server_global.keys()
            for name, values in server_global.items():
                assert np.array_equal(held[name].view(np.int32), values.view(np.int32)), (server_round, name)
            assert client_state(grid, node)["version"][0] == server_round - 1
            record, base = msg.content["arrays"], msg.content["config"]["fedcomp-base"]
            replay = msg.content["config"]["fedcomp-replay"]
            assert len(record.keys()) == (server_round - 1 - base if replay else min(len(record.keys()), 1))
            kinds.add("none" if not len(record.keys()) else "from W_0" if base == 0
                      else f"{'replay' if replay else 'difference'}{server_round - base > 2}")
    # the catch-up paths were exercised: one difference over several missed rounds (or the folded updates
    # replayed when that is smaller), or from W_0 with history 1
    assert {"differenceTrue", "replayFalse"} <= kinds if history == 20 else "from W_0" in kinds


def test_fsfl_scales_travel_dense_beside_a_sparse_update(task_identity):
    config, model, strategy, grid, arrays = make_run({**BIDIR, "up.fraction": 0.01, "fsfl.mode": "compensate"})
    manifest = strategy.manifest
    _, replies, _, _ = one_round(strategy, grid, arrays, 1)
    update = decompress(record_payloads(replies[0].content["arrays"], 10**7)[0], manifest)
    scales = {k: v for k, v in update.items() if is_scale(k)}
    assert scales and all(np.count_nonzero(v) > 0.5 * v.size for v in scales.values())
    weight = update["6.weight"] if "6.weight" in update else update["2.weight"]
    assert np.count_nonzero(weight) <= 0.011 * weight.size


def test_partial_mode_sends_only_the_selected_tensors(task_identity):
    settings = {**BIDIR, "fsfl.mode": "joint", "partial.groups": "scales,bias", "fsfl.fold": False}
    config, model, strategy, grid, arrays = make_run(settings)
    manifest = UpdateSettings.from_config(config).manifest(model)
    expected = {n for n in manifest.names if is_scale(n) or n.endswith(".bias")}
    before = {k: v.numpy().copy() for k, v in arrays.items()}
    messages, replies, arrays, _ = one_round(strategy, grid, arrays, 1)
    for reply in replies:
        payload = record_payloads(reply.content["arrays"], 10**7)[0]
        assert set(decompress(payload, manifest)) == expected
    up = strategy.meter.select(round=1, direction="up")
    assert all(r.dense_bytes == 4 * sum(manifest[manifest.index(n)].size for n in expected) for r in up)
    after = {k: v.numpy() for k, v in arrays.items()}
    frozen = [n for n in manifest.names if n not in expected]
    assert frozen and all(np.array_equal(before[n], after[n]) for n in frozen)  # scales kept, not folded
    assert all(not np.array_equal(before[n], after[n]) for n in expected if is_scale(n))


def test_metered_bytes_equal_the_bytes_carried(task_identity):
    config, model, strategy, grid, arrays = make_run({**BIDIR, "fraction": 0.5})
    for server_round in (1, 2, 3):
        messages, replies, arrays, _ = one_round(strategy, grid, arrays, server_round)
        for msg in messages:
            node = msg.metadata.dst_node_id
            record = strategy.meter.select(round=server_round, direction="down", client=partition(grid, node))[0]
            assert record.payload_bytes == sum(len(a.data) for a in msg.content["arrays"].values())
        for reply in replies:
            node = reply.metadata.src_node_id
            record = strategy.meter.select(round=server_round, direction="up", client=partition(grid, node))[0]
            assert record.payload_bytes == sum(len(a.data) for a in reply.content["arrays"].values()) > 0
    for direction, moved in (("down", grid.bytes_down), ("up", grid.bytes_up)):
        for node, total in moved.items():
            metered = sum(r.message_bytes for r in strategy.meter.select(direction=direction,
                                                                         client=partition(grid, node)))
            assert metered == total  # setup query included: the loopback counted every message


def test_a_corrupted_or_oversized_payload_is_dropped_and_the_round_goes_on(task_identity, caplog):
    config, model, strategy, grid, arrays = make_run(BIDIR)
    bad = sorted(grid.contexts)[:2]
    sent = {}

    def flip_a_byte(reply):
        if "arrays" not in reply.content:  # the setup query's answer
            return reply
        data = bytearray(reply.content["arrays"]["p0"].data)
        data[len(data) // 2] ^= 0x40
        return Message(RecordDict({"arrays": payload_record([bytes(data)]), "metrics": reply.content["metrics"]}),
                       reply_to=sent[reply.metadata.src_node_id])

    def oversized(reply):
        if "arrays" not in reply.content:
            return reply
        record = ArrayRecord({"p0": payload_record([b"FC" + b"\0" * (10**6)])["p0"]})
        return Message(RecordDict({"arrays": record, "metrics": reply.content["metrics"]}),
                       reply_to=sent[reply.metadata.src_node_id])

    grid.tamper = {bad[0]: flip_a_byte, bad[1]: oversized}
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    sent.update({m.metadata.dst_node_id: m for m in messages})
    with caplog.at_level(logging.WARNING):
        new, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert new is not None and metrics["num-examples"] > 0
    text = caplog.text
    assert f"node {bad[0]}" in text and "CRC" in text
    assert f"node {bad[1]}" in text and "more than the model allows" in text
    assert len(strategy.meter.select(round=1, direction="up")) == 4  # what arrived is still metered


def test_server_error_feedback_conserves_the_aggregate(task_identity):
    """sum(delivered downstream) + server residual == sum(server_lr x mean client update), over a run."""
    config, model, strategy, grid, arrays = make_run({**BIDIR, "server.lr": 1.5, "down.fraction": 0.01})
    steps = {}
    strategy.on_client_update = None
    start = {k: v.numpy().copy() for k, v in arrays.items()}
    for server_round in range(1, 7):
        _, replies, arrays, _ = one_round(strategy, grid, arrays, server_round)
        updates = [strategy.upstream.decode(r.content["arrays"], strategy.manifest) for r in replies]
        examples = [float(r.content["metrics"]["num-examples"]) for r in replies]
        for name in updates[0]:
            mean = sum(e * u[name].astype(np.float64) for e, u in zip(examples, updates)) / sum(examples)
            steps[name] = steps.get(name, 0) + 1.5 * mean
    final = {k: v.numpy() for k, v in arrays.items()}
    for name, total in steps.items():
        delivered = final[name].astype(np.float64) - start[name]
        gap = delivered + strategy.server_state[f"residual/{name}"] - total
        assert np.max(np.abs(gap)) < 1e-4, name
        assert np.any(strategy.server_state[f"residual/{name}"] != 0)


def test_client_error_feedback_state_is_kept_between_rounds(task_identity):
    config, model, strategy, grid, arrays = make_run(BIDIR)
    one_round(strategy, grid, arrays, 1)
    for node in grid.contexts:
        state = client_state(grid, node)
        assert state["rounds"].reshape(-1)[0] == 1
        assert any(np.any(v != 0) for k, v in state.items() if k.startswith("residual/"))


def test_a_client_out_of_sync_catches_up_from_w0_next(task_identity):
    config, model, strategy, grid, arrays = make_run(BIDIR)
    for server_round in (1, 2):
        _, _, arrays, _ = one_round(strategy, grid, arrays, server_round)
    victim = sorted(grid.contexts)[0]
    del grid.contexts[victim].state[MEMORY_KEY]  # the node lost its state (a restarted SuperNode)
    _, replies, arrays, _ = one_round(strategy, grid, arrays, 3)
    failed = [r for r in replies if r.has_error()]
    assert len(failed) == 1 and "version" in failed[0].error.reason
    messages, replies, arrays, _ = one_round(strategy, grid, arrays, 4)
    to_victim = next(m for m in messages if m.metadata.dst_node_id == victim)
    assert to_victim.content["config"]["fedcomp-base"] == 0  # the counts since W_0
    assert not any(r.has_error() for r in replies)
    catch_up = strategy.meter.select(round=4, direction="down", client=partition(grid, victim))[0]
    assert 0 < catch_up.payload_bytes < ParamManifest.from_model(model).dense_bytes


def test_ecqx_clients_quantize_with_their_own_relevances_and_qat_trains_locally(task_identity):
    """ECQx gets LRP relevances from a batch of the client's data (its payload differs from ECQ's);
    qat.* makes the local training quantization-aware."""
    payloads = {}
    for quantizer in ("ecq", "ecqx"):
        config, model, strategy, grid, arrays = make_run({"up.scheme": "ecqx-ans", "up.quantizer": quantizer,
                                                          "up.bits": 2, "up.gamma": 0.6}, clients=2)
        _, replies, _, metrics = one_round(strategy, grid, arrays, 1)
        assert not any(r.has_error() for r in replies)
        payloads[quantizer] = [bytes(r.content["arrays"]["p0"].data) for r in replies]
    assert payloads["ecq"] != payloads["ecqx"]
    config, model, strategy, grid, arrays = make_run({"up.scheme": "topk-uniform-ans", "qat.method": "ec2t"},
                                                     clients=2)
    _, replies, _, metrics = one_round(strategy, grid, arrays, 1)
    assert not any(r.has_error() for r in replies)
    assert all(0 < r.content["metrics"]["weight_sparsity"] < 1 for r in replies)


def test_no_compressor_is_built_twice_for_one_message(task_identity, monkeypatch):
    """FSFL compensate, both ways: each client's reply and the server's update are one sender's work each."""
    import fedcomp.exchange.channels as channels

    built = []

    class Counted(channels.Compressor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(channels, "Compressor", Counted)
    config, model, strategy, grid, arrays = make_run({**BIDIR, "fsfl.mode": "compensate", "fraction": 1.0}, clients=3)
    for server_round in (1, 2, 3):
        built.clear()
        messages, replies, arrays, _ = one_round(strategy, grid, arrays, server_round)
        # each client holds the version before the last update: nothing to send in round 1, then one replay
        assert [m.content["config"]["fedcomp-base"] for m in messages] == [max(server_round - 2, 0)] * 3
        # one per client reply and one for the downstream update; from round 2 also the full-model message
        # (once per version, however many clients are behind), whose size decides between it and a replay
        assert len(built) == len(replies) + 1 + (server_round > 1)


def test_state_saved_in_the_old_layout_continues_the_run_exactly(task_identity):
    """Client states and server checkpoints saved as residual/residual/<name> (before the sender object)."""
    runs = [make_run(BIDIR, clients=3) for _ in range(2)]
    arrays = [one_round(strategy, grid, start, 1)[2] for _, _, strategy, grid, start in runs]
    config, model, old, old_grid, _ = runs[1]
    for node in old_grid.contexts:  # rewrite every client's state as the old layout saved it
        state = client_state(old_grid, node)
        sender = {k: v for k, v in state.items() if k.startswith("residual/") or k == "rounds"}
        assert sender and "rounds" in sender
        kept = {k: v for k, v in state.items() if k not in sender}
        MemoryState(old_grid.contexts[node].state).save(1, {**kept, **{"residual/" + k: v for k, v in sender.items()}})
    saved, meta = old.state_dict()
    legacy = {("residual/" + k if k.startswith("residual/") or k == "rounds" else k): v for k, v in saved.items()}
    assert any(k.startswith("residual/residual/") for k in legacy) and "residual/rounds" in legacy
    restored = build_strategy(config, model)
    restored.load_state_dict(legacy, meta, 1)
    assert restored.server_state.keys() == old.server_state.keys()
    restored.sampler.partition_of = dict(old.sampler.partition_of)
    new_replies = one_round(runs[0][2], runs[0][3], arrays[0], 2)[1]
    old_replies = one_round(restored, old_grid, arrays[1], 2)[1]
    by_node = {r.metadata.src_node_id: r.content["arrays"]["p0"].data for r in old_replies}
    assert by_node == {r.metadata.src_node_id: r.content["arrays"]["p0"].data for r in new_replies}
    for strategy in (runs[0][2], restored):  # the server's residual continued too
        assert all(np.array_equal(runs[0][2].server_state[k], v) for k, v in strategy.server_state.items())
