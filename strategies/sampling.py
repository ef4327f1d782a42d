"""Which nodes take part in each round: a seeded choice over partition ids (learnt once by a setup query to
every node) or over node ids (only the sampled nodes are ever contacted; each names its partition in its replies).

Per round, sampling costs O(nodes sampled): the population is listed and ordered once per run, and
``random.sample`` over a large population picks by index.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from logging import WARNING

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedcomp.errors import ConfigError
from fedcomp.exchange.protocol import CONFIG, METRICS, PARTITION_ID
from fedcomp.records.meter import TransferMeter
from strategies.metering import meter_setup

#: How long the first listing of the nodes waits for all the nodes a run expects: Flower's Simulation
#: Engine registers its nodes while the ServerApp already runs (10,000 take seconds).
NODE_WAIT_SECONDS = 120.0


@dataclass
class Sampler:
    """Seeded sampling of nodes.

    With ``discovery="all"`` (``server.discovery``) every node is asked once for its partition
    and the choice is made over partition ids, so that it repeats across runs and engines. With
    ``"sampled"`` no node is contacted unless sampled: the choice is made over node ids (the same
    clients only where node ids repeat) and a node's partition is learnt from its first usable
    reply (`learn`); until then the meter and the logs name it by its node id.

    Parameters
    ----------
    fraction_train, min_train_nodes : float, int
        Share of the nodes sampled for training each round, and the least number sampled.
    fraction_evaluate : float
        Share of the nodes asked for federated evaluation (0 disables it).
    seed : int
        Seeds the choice (with the round).
    discovery : str
        ``all`` or ``sampled`` (above).
    expected : int
        The nodes the run expects (``num_clients``): the first listing waits up to `NODE_WAIT_SECONDS`
        for that many to be connected (0: it takes what is connected).
    """

    fraction_train: float = 1.0
    min_train_nodes: int = 2
    fraction_evaluate: float = 0.0
    seed: int = 0
    discovery: str = "all"
    expected: int = 0
    partition_of: dict[int, int] = field(default_factory=dict)  # node id -> partition id, as far as known
    population: list[int] = field(default_factory=list)  # every node, in sampling order, listed once per run

    def nodes(self, grid: Grid, server_round: int, phase: str, meter: TransferMeter | None = None) -> list[int]:
        """The nodes of ``phase`` (``train`` or ``evaluate``) in ``server_round``, in sampling order.

        Parameters
        ----------
        grid : Grid
            Where the nodes are; listed (and, with ``discovery="all"``, asked for their partitions) the first time.
        server_round : int
            Seeds the choice, with ``seed``.
        phase : str
            ``train`` (``fraction_train``, at least ``min_train_nodes``) or ``evaluate``.
        meter : TransferMeter, optional
            Where the setup query is metered, if it happens now.

        Returns
        -------
        list of int
            Node ids (none for ``evaluate`` when ``fraction_evaluate`` is 0), ordered by partition id
            (``discovery="all"``) or node id (``"sampled"``).
        """
        fraction, minimum = ((self.fraction_train, self.min_train_nodes) if phase == "train"
                             else (self.fraction_evaluate, 1))
        if phase == "evaluate" and fraction <= 0:
            return []
        if self.discovery == "sampled":
            if not self.population:
                self.population = self.connected(grid)
        else:
            if not self.partition_of:
                self.partition_of = self.discover(grid, meter)
            if len(self.population) != len(self.partition_of):  # listed once, again only if the mapping is replaced
                self.population = sorted(self.partition_of, key=self.partition_of.__getitem__)
        if not self.population:
            raise ConfigError("no client node can take part in this run: no node is connected")
        count = min(len(self.population), max(int(len(self.population) * fraction), minimum))
        chosen = random.Random(self.seed * 1_000_003 + server_round).sample(range(len(self.population)), count)
        return [self.population[i] for i in sorted(chosen)]

    def connected(self, grid: Grid) -> list[int]:
        """The connected nodes, sorted, once ``expected`` of them are (or `NODE_WAIT_SECONDS` have passed)."""
        deadline = time.monotonic() + NODE_WAIT_SECONDS
        nodes = sorted(grid.get_node_ids())
        while len(nodes) < self.expected and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = sorted(grid.get_node_ids())
        if len(nodes) < self.expected:
            log(WARNING, "%d of the %d nodes this run expects are connected after %.0f s; it goes on with them",
                len(nodes), self.expected, NODE_WAIT_SECONDS)
        return nodes

    def learn(self, node: int, metrics: MetricRecord) -> None:
        """Note the partition a node names in a usable reply (``partition-id``), with ``discovery="sampled"``
        (with ``"all"`` the setup query's answer stands)."""
        if self.discovery != "sampled":
            return
        value = metrics.get(PARTITION_ID)
        if isinstance(value, int) and not isinstance(value, bool):
            self.partition_of[node] = value

    def discover(self, grid: Grid, meter: TransferMeter | None = None) -> dict[int, int]:
        """Ask every connected node for its partition id (metered as round 0 when ``meter`` is given).

        Returns
        -------
        dict
            Node id to partition id of every node that answered; ConfigError if none did.
        """
        asked = [Message(RecordDict({CONFIG: ConfigRecord({"fedcomp-setup": 1})}), node, MessageType.QUERY)
                 for node in self.connected(grid)]
        replies = list(grid.send_and_receive(asked))
        mapping: dict[int, int] = {}
        failures: list[str] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failures.append(reply.error.reason)
                log(WARNING, "node %d did not answer the setup query: %s", node, reply.error.reason)
                continue
            mapping[node] = int(reply.content[METRICS][PARTITION_ID])
        if meter is not None:
            meter_setup(meter, asked, replies, lambda node: mapping.get(node, node))
        if not mapping:
            reason = failures[0] if failures else "no node is connected"
            raise ConfigError(f"no client node can take part in this run: {reason}")
        return mapping

    def describe(self, node: int) -> str:
        """``node`` as the logs name it: its node id and its partition, if known."""
        partition = self.partition_of.get(node)
        return f"node {node} (partition {'not known yet' if partition is None else partition})"

    def client_of(self, node: int) -> int:
        """The id the meter and the logs use for ``node``: its partition id (the node id while it is unknown).

        Partition ids, unlike Flower's node ids, are the same in every run of a config, so
        that metered figures repeat across runs, resumes and engines.
        """
        return self.partition_of.get(node, node)
