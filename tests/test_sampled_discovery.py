"""``server.discovery = sampled``: only sampled nodes are ever contacted, partitions are learnt from replies.

Real Flower messages over the loopback grid (every message serialised and inflated as across a
SuperLink), fedcomp's ServerApp code (`serve`) and ClientApp; no Ray.
"""

import json
import random

import pytest
from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict

from clients.client_app import app as client_app
from fedcomp.compress.params import state_arrays
from fedcomp.records.meter import TransferMeter
from fedcomp.records.results import read_rounds
from fedcomp.run.config import resolve
from fedcomp.run.experiment import run_model
from fedcomp.run.presets import preset
from strategies.loopback import LoopbackGrid
from strategies.sampling import Sampler
from strategies.server_app import build_strategy, serve

CLIENTS = 40


class ListingGrid(LoopbackGrid):
    """The loopback grid, counting how often the server lists its nodes."""

    listings = 0

    def get_node_ids(self):
        self.listings += 1
        return super().get_node_ids()


def run(tmp_path, discovery: str, rounds: int, **extra) -> tuple[ListingGrid, list[dict], dict]:
    """A loopback run of the flagship on ``CLIENTS`` clients, 10% sampled; its grid, rows and summary.

    Node ids are random and unordered, as under Flower: sampling order is not partition order.
    """
    config = resolve(preset("fsfl-bidir"), {"num_clients": CLIENTS, "fraction": 0.1, "rounds": rounds, "seed": 3,
                                            "server.discovery": discovery, "output.dir": str(tmp_path / discovery),
                                            **extra})
    node_ids = random.Random(7).sample(range(1, 2**40), CLIENTS)
    grid = ListingGrid(client_app, {node: pid for pid, node in enumerate(node_ids)}, config)
    serve(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config)),
          build_strategy)
    run_dir = tmp_path / discovery
    return grid, read_rounds(run_dir), json.loads((run_dir / "summary.json").read_text())


def clients(row: dict) -> set[int]:
    """The ids a round's row names its clients by."""
    return {c["partition_id"] for c in row["clients"]}


def chosen(grid: LoopbackGrid, rounds: int) -> set[int]:
    """The nodes a sampled-discovery Sampler picks for training in rounds 1..``rounds``."""
    sampler = Sampler(fraction_train=0.1, min_train_nodes=2, seed=3, discovery="sampled")
    return {node for r in range(1, rounds + 1) for node in sampler.nodes(grid, r, "train")}


def test_only_sampled_nodes_receive_messages_before_and_in_round_1(tmp_path, task_identity):
    grid, rows, summary = run(tmp_path, "sampled", rounds=1)
    sampled = chosen(grid, 1)
    assert len(sampled) == CLIENTS // 10
    assert set(grid.bytes_down) == sampled  # no setup query: nobody else got a message
    assert set(grid.bytes_up) == sampled
    assert grid.listings == 2  # the run's Sampler listed the nodes once; chosen() once more
    # the meter names every client by its partition, learnt from its reply
    assert sorted(clients(rows[0])) == sorted(grid.contexts[n].node_config["partition-id"] for n in sampled)

    everyone, _, _ = run(tmp_path, "all", rounds=1)
    assert len(everyone.bytes_down) == CLIENTS  # the setup query reaches every node


def test_sampled_discovery_keeps_the_catch_up_of_every_later_round(tmp_path, task_identity):
    """Over 6 rounds nodes come back after missing rounds: their catch-up (by the version kept under the
    partition learnt from their replies) must still reach W_t, so no client fails; and the contacted nodes
    are exactly the sampled ones."""
    grid, rows, summary = run(tmp_path, "sampled", rounds=6)
    assert set(grid.bytes_down) == chosen(grid, 6)
    assert all(r["clients_failed"] == 0 for r in rows)
    came_back = [r for r in range(2, 7) if clients(rows[r - 1]) & set().union(*(clients(rows[p])
                                                                                 for p in range(r - 1)))]
    assert came_back, "no client was sampled twice: the catch-up of a returning client went untested"


def test_a_node_that_never_replies_usably_is_metered_by_its_node_id(task_identity, caplog):
    config = resolve({"num_clients": 4, "server.discovery": "sampled"})
    grid = LoopbackGrid(client_app, {901: 0, 902: 1, 903: 2, 904: 3}, config)
    grid.contexts[903].node_config["num-partitions"] = 9  # its ClientApp refuses every message
    model = run_model(config)
    strategy = build_strategy(config, model)
    arrays = strategy.initial_arrays(state_arrays(model))
    replies = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    strategy.aggregate_train(1, replies)
    assert strategy.sampler.partition_of == {901: 0, 902: 1, 904: 3}
    assert sorted({r.client for r in strategy.meter.select(round=1)}) == [0, 1, 3, 903]
    assert "round 1: node 903 (partition not known yet) failed" in caplog.text


def test_sampler_learns_only_integer_partition_ids_and_only_when_sampling_nodes():
    sampled, everyone = Sampler(discovery="sampled"), Sampler(discovery="all")
    for sampler in (sampled, everyone):
        sampler.learn(5, MetricRecord({"partition-id": 2}))
        sampler.learn(6, MetricRecord({"partition-id": 2.5}))
        sampler.learn(7, MetricRecord({"loss": 1.0}))
    assert sampled.partition_of == {5: 2}
    assert everyone.partition_of == {}  # the setup query's answers stand


def test_meter_rename_touches_only_the_latest_round_and_that_client():
    meter = TransferMeter()
    meter.record(1, "down", 77, "train", 1, 2, 3)
    meter.record(2, "down", 77, "train", 1, 2, 3)
    meter.record(2, "down", 78, "train", 1, 2, 3)
    meter.record(2, "up", 77, "train", 1, 2, 3)
    meter.rename(2, 77, 4)
    assert [(r.round, r.client) for r in meter.records] == [(1, 77), (2, 4), (2, 78), (2, 4)]


@pytest.mark.parametrize("count", [10, 10_000])
def test_sampling_picks_by_index_in_the_population(count):
    """The choice depends on the population's size only, so listing the nodes once (by node id or partition)
    and sampling indices gives the same picks as sampling the list itself."""
    sampler = Sampler(fraction_train=0.01, min_train_nodes=1, seed=4, discovery="sampled")
    sampler.population = list(range(1000, 1000 + 3 * count, 3))
    picks = sampler.nodes(None, 5, "train")
    expected = sorted(random.Random(4 * 1_000_003 + 5).sample(sampler.population, max(count // 100, 1)))
    assert picks == expected


class JoiningGrid(LoopbackGrid):
    """Nodes that connect one listing at a time, as Flower's Simulation Engine registers them while the
    ServerApp already runs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.visible = 1

    def get_node_ids(self):
        self.visible += 1
        return list(self.contexts)[:self.visible]


@pytest.mark.parametrize("discovery", ["sampled", "all"])
def test_the_first_listing_waits_for_every_node_the_run_expects(task_identity, discovery):
    config = resolve({"num_clients": 4, "server.discovery": discovery})
    grid = JoiningGrid(client_app, {901: 0, 902: 1, 903: 2, 904: 3}, config)
    strategy = build_strategy(config, run_model(config))
    strategy.configure_train(1, strategy.initial_arrays(state_arrays(run_model(config))), ConfigRecord(), grid)
    assert grid.visible == 4
    assert sorted(strategy.sampler.population) == [901, 902, 903, 904]
