"""The strategy's per-round bookkeeping stays bounded over many rounds (no Ray, no training after round 1)."""

from flwr.app import ConfigRecord, Message

from clients.client_app import app as client_app
from fedcomp.run.config import resolve
from fedcomp.run.experiment import run_model
from fedcomp.compress.params import state_arrays
from strategies.loopback import LoopbackGrid
from strategies.server_app import build_strategy


def test_per_round_bookkeeping_does_not_grow_with_the_round_number(task_identity):
    config = resolve({"num_clients": 3, "up.scheme": "topk-uniform-ans", "up.fraction": 0.02,
                      "down.scheme": "topk-uniform-ans", "down.fraction": 0.03, "sync.history": 4})
    model = run_model(config)
    strategy = build_strategy(config, model)
    grid = LoopbackGrid(client_app, {61: 0, 62: 1, 63: 2}, config)
    arrays = strategy.initial_arrays(state_arrays(model))
    replies = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    content = {r.metadata.src_node_id: r.content for r in replies}
    arrays, _ = strategy.aggregate_train(1, replies)
    records_per_round = len(strategy.meter.select(round=1))
    for server_round in range(2, 41):  # the clients' first replies again: the server's side of 40 rounds
        sent = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        arrays, _ = strategy.aggregate_train(server_round, [Message(content[m.metadata.dst_node_id], reply_to=m)
                                                            for m in sent])
        assert list(strategy.client_timings) == [server_round]  # the latest round only
        assert strategy.round_timings(server_round - 1) == {}
        assert strategy.round_timings(server_round)["clients_usable"] == 3
        assert len(strategy.sync.history.changes) == min(server_round, 4)  # sync.history
        assert set(strategy.client_version) == {0, 1, 2}
        assert len(strategy.sampler.partition_of) == 3
        # the meter is the run's data: one record per message, nothing more
        assert len(strategy.meter.records) == len(strategy.meter.select(round=0)) + server_round * records_per_round


def test_the_versions_kept_per_client_are_bounded_by_the_clients_of_the_last_sync_history_rounds(task_identity):
    """Clients sampled longer ago than ``sync.history`` rounds are dropped from the server's per-client versions
    (they get the catch-up from W_0 either way), and every returning client still reaches W_t."""
    config = resolve({"num_clients": 12, "fraction": 0.25, "up.scheme": "topk-uniform-ans", "up.fraction": 0.02,
                      "down.scheme": "topk-uniform-ans", "down.fraction": 0.03, "sync.history": 2})
    model = run_model(config)
    strategy = build_strategy(config, model)
    grid = LoopbackGrid(client_app, {200 + i: i for i in range(12)}, config)
    arrays = strategy.initial_arrays(state_arrays(model))
    recent: list[set[int]] = []
    for server_round in range(1, 13):
        replies = grid.send_and_receive(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        recent.append({strategy.sampler.client_of(r.metadata.src_node_id) for r in replies})
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert strategy.round_timings(server_round)["clients_usable"] == 3
        assert set(strategy.client_version) <= set().union(*recent[-3:])  # this round's and sync.history more
    assert len(set().union(*recent)) > 9  # most clients came and went
