"""Which nodes take part in each round: a seeded choice over partition ids, learnt once by a setup query."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from logging import WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from fedcomp.errors import ConfigError
from fedcomp.exchange.protocol import CONFIG, METRICS, PARTITION_ID
from fedcomp.records.meter import TransferMeter
from strategies.metering import meter_setup


@dataclass
class Sampler:
    """Seeded sampling of nodes, made over partition ids so that it repeats across runs.

    Parameters
    ----------
    fraction_train, min_train_nodes : float, int
        Share of the nodes sampled for training each round, and the least number sampled.
    fraction_evaluate : float
        Share of the nodes asked for federated evaluation (0 disables it).
    seed : int
        Seeds the choice (with the round).
    """

    fraction_train: float = 1.0
    min_train_nodes: int = 2
    fraction_evaluate: float = 0.0
    seed: int = 0
    partition_of: dict[int, int] = field(default_factory=dict)  # node id -> partition id, once discovered

    def nodes(self, grid: Grid, server_round: int, phase: str, meter: TransferMeter | None = None) -> list[int]:
        """The nodes of ``phase`` (``train`` or ``evaluate``) in ``server_round``, in partition order.

        Parameters
        ----------
        grid : Grid
            Where the nodes are; asked for their partitions the first time.
        server_round : int
            Seeds the choice, with ``seed``.
        phase : str
            ``train`` (``fraction_train``, at least ``min_train_nodes``) or ``evaluate``.
        meter : TransferMeter, optional
            Where the setup query is metered, if it happens now.

        Returns
        -------
        list of int
            Node ids (none for ``evaluate`` when ``fraction_evaluate`` is 0).
        """
        fraction, minimum = ((self.fraction_train, self.min_train_nodes) if phase == "train"
                             else (self.fraction_evaluate, 1))
        if phase == "evaluate" and fraction <= 0:
            return []
        if not self.partition_of:
            self.partition_of = self.discover(grid, meter)
        by_partition = sorted(self.partition_of, key=self.partition_of.__getitem__)
        count = min(len(by_partition), max(int(len(by_partition) * fraction), minimum))
        chosen = random.Random(self.seed * 1_000_003 + server_round).sample(by_partition, count)
        return sorted(chosen, key=self.partition_of.__getitem__)

    def discover(self, grid: Grid, meter: TransferMeter | None = None) -> dict[int, int]:
        """Ask every connected node for its partition id (metered as round 0 when ``meter`` is given).

        Returns
        -------
        dict
            Node id to partition id of every node that answered; ConfigError if none did.
        """
        asked = [Message(RecordDict({CONFIG: ConfigRecord({"fedcomp-setup": 1})}), node, MessageType.QUERY)
                 for node in sorted(grid.get_node_ids())]
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

    def client_of(self, node: int) -> int:
        """The id the meter and the logs use for ``node``: its partition id (the node id before setup).

        Partition ids, unlike Flower's node ids, are the same in every run of a config, so
        that metered figures repeat across runs, resumes and engines.
        """
        return self.partition_of.get(node, node)
