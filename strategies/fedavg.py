"""FedAvg over Flower's Message API, with metering and swappable channels.

The round loop is Flower's own ``Strategy.start``; this class fills its hooks:

* ``configure_train`` samples clients (seeded, by partition id, so runs repeat exactly),
  encodes the global model with the *downstream* channel and meters each message;
* ``aggregate_train`` meters each reply, decodes it with the *upstream* channel (a reply
  that does not fit the model is dropped with a logged reason, never crashing the round)
  and averages the results weighted by example counts, in partition order;
* ``configure_evaluate``/``aggregate_evaluate`` run optional federated evaluation.

Before the first round the strategy asks every node once for its partition id (a
``query`` message, metered as round 0, kind ``setup``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import NamedTuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedcomp.errors import ConfigError, PayloadError
from fedcomp.meter import TransferMeter
from fedcomp.params import ParamManifest
from fedcomp.channels import Channel, DenseChannel, dense_record, record_tensors
from fedcomp.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID
from strategies.metering import content_size, serialized_size


UpdateSink = Callable[[int, int, dict[str, np.ndarray]], None]


class ClientResult(NamedTuple):
    """One usable reply: whose it is, how many examples stand behind it, what it carries."""

    partition: int
    examples: int
    tensors: dict[str, np.ndarray]
    metrics: MetricRecord


class FedAvg(Strategy):
    """Federated averaging of full local models, weighted by local example counts."""

    def __init__(
        self,
        manifest: ParamManifest,
        *,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        fraction_evaluate: float = 0.0,
        seed: int = 0,
        downstream: Channel | None = None,
        upstream: Channel | None = None,
        meter: TransferMeter | None = None,
        on_client_update: UpdateSink | None = None,
    ) -> None:
        self.manifest = manifest
        self.fraction_train = fraction_train
        self.min_train_nodes = min_train_nodes
        self.fraction_evaluate = fraction_evaluate
        self.seed = seed
        self.downstream = downstream or DenseChannel()
        self.upstream = upstream or DenseChannel()
        self.meter = meter or TransferMeter()
        self.on_client_update = on_client_update
        self.partition_of: dict[int, int] = {}
        self._global: dict[str, np.ndarray] = {}

    # ---- Flower hooks --------------------------------------------------------------

    def summary(self) -> None:
        log(INFO, "\t├──> fedcomp FedAvg: fraction_train=%.2f, min_train_nodes=%d, fraction_evaluate=%.2f",
            self.fraction_train, self.min_train_nodes, self.fraction_evaluate)
        log(INFO, "\t└──> channels: down=%s, up=%s", type(self.downstream).__name__, type(self.upstream).__name__)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self.sample(grid, server_round, self.fraction_train, self.min_train_nodes)
        self._global = record_tensors(arrays)
        config["server-round"] = server_round
        return self._broadcast(server_round, self._global, config, nodes, MessageType.TRAIN, "train")

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        decoded = self._receive(server_round, replies, "train", decode=True)
        if not decoded:
            log(WARNING, "round %d: no usable training replies; the global model is unchanged", server_round)
            return None, None
        weights = np.array([r.examples for r in decoded], dtype=np.float64)
        weights /= weights.sum()
        averaged = {
            name: sum(w * r.tensors[name].astype(np.float64) for w, r in zip(weights, decoded)).astype(np.float32)
            for name in self.manifest.names
        }
        if self.on_client_update is not None:
            for r in decoded:
                self.on_client_update(server_round, r.partition, {k: r.tensors[k] - self._global[k] for k in r.tensors})
        return dense_record(averaged), _weighted_metrics(decoded)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate <= 0:
            return []
        nodes = self.sample(grid, server_round, self.fraction_evaluate, 1)
        config["server-round"] = server_round
        return self._broadcast(server_round, record_tensors(arrays), config, nodes, MessageType.EVALUATE, "evaluate")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        received = self._receive(server_round, replies, "evaluate", decode=False)
        return _weighted_metrics(received) if received else None

    # ---- sampling ------------------------------------------------------------------

    def sample(self, grid: Grid, server_round: int, fraction: float, minimum: int) -> list[int]:
        """Seeded choice of nodes, made over partition ids so that it repeats across runs."""
        if not self.partition_of:
            self.partition_of = self.discover_partitions(grid)
        by_partition = sorted(self.partition_of, key=self.partition_of.__getitem__)
        count = min(len(by_partition), max(int(len(by_partition) * fraction), minimum))
        rng = random.Random(self.seed * 1_000_003 + server_round)
        chosen = rng.sample(by_partition, count)
        return sorted(chosen, key=self.partition_of.__getitem__)

    def discover_partitions(self, grid: Grid) -> dict[int, int]:
        """Ask every connected node for its partition id (one metered query each)."""
        nodes = sorted(grid.get_node_ids())
        ask = [Message(RecordDict({CONFIG: ConfigRecord({"fedcomp-setup": 1})}), node, MessageType.QUERY)
               for node in nodes]
        for msg in ask:
            self.meter.record(0, "down", msg.metadata.dst_node_id, "setup", 0, serialized_size(msg), 0)
        mapping: dict[int, int] = {}
        failures: list[str] = []
        for reply in grid.send_and_receive(ask):
            node = reply.metadata.src_node_id
            self.meter.record(0, "up", node, "setup", 0, serialized_size(reply), 0)
            if reply.has_error():
                failures.append(reply.error.reason)
                log(WARNING, "node %d did not answer the setup query: %s", node, reply.error.reason)
                continue
            mapping[node] = int(reply.content[METRICS][PARTITION_ID])
        if not mapping:
            reason = failures[0] if failures else "no node is connected"
            raise ConfigError(f"no client node can take part in this run: {reason}")
        return mapping

    # ---- helpers -------------------------------------------------------------------

    def _broadcast(self, server_round: int, tensors: dict[str, np.ndarray], config: ConfigRecord,
                   nodes: list[int], message_type: str, kind: str) -> list[Message]:
        record = self.downstream.encode(tensors)
        payload = self.downstream.payload_bytes(record)
        content = RecordDict({ARRAYS: record, CONFIG: config})
        shared = content_size(content)
        messages = [Message(content, node, message_type) for node in nodes]
        for msg in messages:
            self.meter.record(server_round, "down", msg.metadata.dst_node_id, kind, payload,
                              serialized_size(msg, shared), self.manifest.dense_bytes)
        return messages

    def _receive(self, server_round: int, replies: Iterable[Message], kind: str,
                 decode: bool) -> list[ClientResult]:
        """Meter each reply; return the usable ones in partition order."""
        received = []
        for reply in replies:
            node = reply.metadata.src_node_id
            record = reply.content.array_records.get(ARRAYS) if reply.has_content() else None
            payload = self.upstream.payload_bytes(record) if record is not None else 0
            self.meter.record(server_round, "up", node, kind, payload, serialized_size(reply),
                              self.manifest.dense_bytes if record is not None else 0)
            if reply.has_error():
                log(WARNING, "round %d: node %d failed: %s", server_round, node, reply.error.reason)
                continue
            content = reply.content
            try:
                metrics = content[METRICS]
                examples = int(metrics[NUM_EXAMPLES])
                tensors = self.upstream.decode(record, self.manifest) if decode else {}
            except (KeyError, TypeError, PayloadError) as err:
                log(WARNING, "round %d: dropped the reply of node %d: %s", server_round, node, err)
                continue
            if examples <= 0:
                log(WARNING, "round %d: dropped the reply of node %d: it reports %d examples",
                    server_round, node, examples)
                continue
            received.append(ClientResult(self.partition_of.get(node, node), examples, tensors, metrics))
        received.sort(key=lambda r: r.partition)
        return received


def _weighted_metrics(received: list[ClientResult]) -> MetricRecord:
    """Example-weighted mean of every numeric metric the replies share."""
    total = sum(r.examples for r in received)
    shared = set.intersection(*(set(r.metrics.keys()) for r in received)) - {NUM_EXAMPLES, PARTITION_ID}
    out = {k: sum(float(r.metrics[k]) * r.examples for r in received) / total
           for k in sorted(shared) if all(isinstance(r.metrics[k], (int, float)) for r in received)}
    out[NUM_EXAMPLES] = total
    return MetricRecord(out)
