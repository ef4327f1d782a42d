"""FedAvg over Flower's Message API, with metering and swappable channels.

The round loop is Flower's own ``Strategy.start``; this class fills its hooks:

* ``configure_train`` samples clients (seeded, by partition id, so runs repeat exactly)
  and builds their messages with :meth:`FedAvg.train_messages` (the global model through
  the *downstream* channel), metering each;
* ``aggregate_train`` meters each reply, decodes it with :meth:`FedAvg.decode_reply` (a
  reply that does not fit the model is dropped with a logged reason, never crashing the
  round) and combines the results with :meth:`FedAvg.aggregate` (the example-weighted
  mean, in partition order);
* ``configure_evaluate``/``aggregate_evaluate`` run optional federated evaluation.

Subclasses change what travels by overriding those three small hooks
(`strategies.differential.DifferentialFedAvg` sends compressed differences).

Before the first round the strategy asks every node once for its partition id (a
``query`` message, metered as round 0, kind ``setup``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any, NamedTuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedcomp.errors import ConfigError, DivergedError, PayloadError
from fedcomp.records.meter import TransferMeter, TransferRecord
from fedcomp.compress.params import ParamManifest
from fedcomp.exchange.channels import (Channel, DenseChannel, Encoded, dense_record, float32_bytes, record_bytes,
                                      record_tensors)
from fedcomp.exchange.updates import bound_update
from fedcomp.exchange.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID, SERVER_ROUND, TIMINGS
from strategies.metering import content_size, serialized_size


UpdateSink = Callable[[int, dict[int, dict[str, np.ndarray]]], None]


class ClientResult(NamedTuple):
    """One usable reply: whose it is, how many examples stand behind it, what it carries."""

    partition: int
    examples: int
    tensors: dict[str, np.ndarray]
    metrics: MetricRecord


class FedAvg(Strategy):
    """Federated averaging of full local models, weighted by local example counts.

    Parameters
    ----------
    manifest : ParamManifest
        The tensors exchanged (names and shapes), the same on every party.
    fraction_train, min_train_nodes : float, int
        Share of the nodes sampled for training each round, and the least number sampled.
    fraction_evaluate : float
        Share of the nodes asked for federated evaluation (0 disables it).
    seed : int
        Seeds the sampling (made over partition ids, so it repeats across runs).
    downstream, upstream : Channel, optional
        How tensors travel in each direction (default: dense float32 records).
    meter : TransferMeter, optional
        Where every message's sizes are recorded.
    on_client_update : callable, optional
        Called once per aggregated round with ``(round, {partition: local - global})`` over
        its usable training replies.
    max_update_norm, norm_action : float, str
        An L2 bound on each client's update (0: none) and what to do above it (``clip`` or
        ``refuse``, which drops the reply).
    min_results : int
        The fewest usable training replies a round needs; below it the global model stays
        as it was (the round is logged as such and the run goes on).
    max_failed_rounds : int
        After this many rounds in a row in which every sampled client failed, the run stops
        with `DivergedError` (0: never); so does a non-finite global model, at once.
    """

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
        max_update_norm: float = 0.0,
        norm_action: str = "clip",
        min_results: int = 1,
        max_failed_rounds: int = 3,
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
        self.max_update_norm, self.norm_action = max_update_norm, norm_action
        self.partition_of: dict[int, int] = {}
        self.resumed_from = 0  # the checkpointed round this strategy continued from (0: a fresh run)
        self.client_timings: dict[int, dict[str, float]] = {}  # the latest round's only
        self._global: dict[str, np.ndarray] = {}
        self.min_results = min_results
        self.max_failed_rounds = max_failed_rounds
        self.failed_rounds = 0  # rounds in a row, up to the latest, in which every sampled client failed
        self._sent_to: list[int] = []  # the nodes asked in the current phase (train or evaluate)

    # ---- what serve() reads (strategies.server_app.Observed) ------------------------

    def initial_arrays(self, model_tensors: dict[str, np.ndarray]) -> ArrayRecord:
        """The record the first round starts from, given the seed-built model's tensors.

        Parameters
        ----------
        model_tensors : dict
            The initial model's exchanged tensors.

        Returns
        -------
        ArrayRecord
            What Flower passes to the first ``configure_train``.
        """
        return dense_record(model_tensors)

    def model_tensors(self, arrays: ArrayRecord) -> dict[str, np.ndarray]:
        """The plain model tensors a global record stands for (what central evaluation loads)."""
        return record_tensors(arrays)

    def round_timings(self, server_round: int) -> dict[str, float]:
        """Mean and max of the clients' reported timings in ``server_round``, and how many
        sampled clients replied usably, failed and timed out (empty for an older round)."""
        return dict(self.client_timings.get(server_round, {}))

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What this strategy needs to continue a run after a crash (`fedcomp.records.checkpoint`).

        Returns
        -------
        tuple
            Arrays, and JSON-serialisable values: here the meter's records. Node ids are not
            kept: a resumed run has new ones and maps them to partitions again.
        """
        return {}, {"meter": self.meter.as_rows(), "failed_rounds": self.failed_rounds}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], server_round: int) -> None:
        """Continue from what `state_dict` returned after ``server_round``.

        Parameters
        ----------
        arrays, meta : dict
            `state_dict`'s two parts, as saved.
        server_round : int
            The last completed round; the next one this strategy configures is ``server_round + 1``.
        """
        self.meter.records = [TransferRecord(**row) for row in meta["meter"]]
        self.failed_rounds = int(meta.get("failed_rounds", 0))
        self.partition_of = {}
        self.resumed_from = server_round

    # ---- Flower hooks --------------------------------------------------------------

    def summary(self) -> None:
        log(INFO, "\t├──> fedcomp %s: fraction_train=%.2f, min_train_nodes=%d, fraction_evaluate=%.2f",
            type(self).__name__, self.fraction_train, self.min_train_nodes, self.fraction_evaluate)
        log(INFO, "\t└──> channels: down=%s, up=%s", type(self.downstream).__name__, type(self.upstream).__name__)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self.sample(grid, server_round, self.fraction_train, self.min_train_nodes)
        self._global = record_tensors(arrays)
        config[SERVER_ROUND] = server_round
        self._sent_to = nodes
        return self.train_messages(server_round, nodes, config)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replied: list[int] = []
        decoded = self._receive(server_round, _tally(replies, replied), "train", decode=True)
        self.received(decoded)
        timed_out = self._log_missing(server_round, replied)
        self.client_timings = {server_round: {
            **_timing_summary(decoded), "clients_sampled": len(self._sent_to),
            "clients_usable": len(decoded), "clients_failed": len(self._sent_to) - len(decoded),
            "clients_timed_out": timed_out}}
        self.failed_rounds = 0 if decoded or not self._sent_to else self.failed_rounds + 1
        if self.max_failed_rounds and self.failed_rounds >= self.max_failed_rounds:
            raise DivergedError(f"the run diverged in round {server_round}: every sampled client failed in the "
                                f"last {self.failed_rounds} rounds", server_round)
        if len(decoded) < self.min_results:
            log(WARNING, "round %d: %d usable training replies, fewer than server.min_results = %d; "
                "the global model is unchanged", server_round, len(decoded), self.min_results)
            return None, None
        new_global = self.aggregate(server_round, decoded)
        check_finite(server_round, new_global, "global model")
        return dense_record(new_global), _weighted_metrics(decoded)

    # ---- hooks a subclass may override ---------------------------------------------

    def train_messages(self, server_round: int, nodes: list[int], config: ConfigRecord) -> list[Message]:
        """The training messages of ``nodes``: here, the global model broadcast downstream.

        Parameters
        ----------
        server_round : int
            The current round.
        nodes : list of int
            The sampled node ids.
        config : ConfigRecord
            The round's configuration, sent alongside.

        Returns
        -------
        list of Message
            One metered message per node.
        """
        encoded, _ = self.downstream.encode(self._global)
        return self._broadcast(server_round, encoded, config, nodes, MessageType.TRAIN, "train")

    def decode_reply(self, record: ArrayRecord | None) -> dict[str, np.ndarray]:
        """The tensors of one training reply's ``arrays`` record (PayloadError if it does not fit).

        Returns
        -------
        dict
            Here the client's full local model.
        """
        if record is None:
            raise PayloadError("the reply carries no arrays")
        local = self.upstream.decode(record, self.manifest)
        if self.max_update_norm <= 0:
            return local
        update = bound_update({k: local[k] - self._global[k] for k in local}, self.max_update_norm,
                              self.norm_action)
        return {k: self._global[k] + update[k] for k in update}

    def received(self, results: list[ClientResult]) -> None:
        """Sees a round's usable training replies, whether or not there are enough to aggregate.

        Called before `aggregate`, and also in a round left below ``server.min_results``; this
        class needs nothing from it.

        Parameters
        ----------
        results : list of ClientResult
            The round's usable training replies, in partition order.
        """

    def aggregate(self, server_round: int, results: list[ClientResult]) -> dict[str, np.ndarray]:
        """The next global model from the usable replies: the example-weighted mean.

        Parameters
        ----------
        server_round : int
            The current round.
        results : list of ClientResult
            The usable replies, in partition order.

        Returns
        -------
        dict
            The new global tensors.
        """
        weights = np.array([r.examples for r in results], dtype=np.float64)
        weights /= weights.sum()
        averaged = {
            name: sum(w * r.tensors[name].astype(np.float64) for w, r in zip(weights, results)).astype(np.float32)
            for name in self.manifest.names
        }
        if self.on_client_update is not None:
            self.on_client_update(server_round, {r.partition: {k: r.tensors[k] - self._global[k] for k in r.tensors}
                                                 for r in results})
        return averaged

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self._sent_to = []
        if self.fraction_evaluate <= 0:
            return []
        nodes = self.sample(grid, server_round, self.fraction_evaluate, 1)
        config[SERVER_ROUND] = server_round
        self._sent_to = nodes
        encoded, _ = DenseChannel().encode(record_tensors(arrays))
        return self._broadcast(server_round, encoded, config, nodes, MessageType.EVALUATE, "evaluate")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replied: list[int] = []
        received = self._receive(server_round, _tally(replies, replied), "evaluate", decode=False)
        self._log_missing(server_round, replied)
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
        replies = list(grid.send_and_receive(ask))
        mapping: dict[int, int] = {}
        failures: list[str] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failures.append(reply.error.reason)
                log(WARNING, "node %d did not answer the setup query: %s", node, reply.error.reason)
                continue
            mapping[node] = int(reply.content[METRICS][PARTITION_ID])
        if not self.resumed_from:  # a resumed run's setup query is not part of the experiment
            for msg in ask:
                self.meter.record(0, "down", mapping.get(msg.metadata.dst_node_id, msg.metadata.dst_node_id),
                                  "setup", 0, serialized_size(msg), 0)
            for reply in replies:
                self.meter.record(0, "up", mapping.get(reply.metadata.src_node_id, reply.metadata.src_node_id),
                                  "setup", 0, serialized_size(reply), 0)
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

    # ---- helpers -------------------------------------------------------------------

    def _broadcast(self, server_round: int, encoded: Encoded, config: ConfigRecord,
                   nodes: list[int], message_type: str, kind: str) -> list[Message]:
        """One message per node, all with the same content (measured once), each metered."""
        content = RecordDict({ARRAYS: encoded.record, CONFIG: config})
        shared = content_size(content)
        messages = [Message(content, node, message_type) for node in nodes]
        for msg in messages:
            self.meter.record(server_round, "down", self.client_of(msg.metadata.dst_node_id), kind,
                              encoded.payload_bytes, serialized_size(msg, shared), encoded.dense_bytes)
        return messages

    def _log_missing(self, server_round: int, replied: list[int]) -> int:
        """Log each node asked this phase that sent no reply (the grid's timeout passed); return how many."""
        missing = sorted(set(self._sent_to) - set(replied), key=self.client_of)
        for node in missing:
            log(WARNING, "round %d: node %d (partition %d) failed: timed out, no reply within "
                "server.round_timeout", server_round, node, self.client_of(node))
        return len(missing)

    def _receive(self, server_round: int, replies: Iterable[Message], kind: str,
                 decode: bool) -> list[ClientResult]:
        """Meter each reply; return the usable ones in partition order.

        Whatever a client sends, a reply that cannot be used is logged with its node and
        reason and dropped; it never ends the round.
        """
        received = []
        for reply in replies:
            node = reply.metadata.src_node_id
            record = reply.content.array_records.get(ARRAYS) if reply.has_content() else None
            usable: ClientResult | None = None
            reason = reply.error.reason if reply.has_error() else ""
            if not reply.has_error():
                try:
                    metrics = _reply_metrics(reply.content, decode)
                    examples = _example_count(metrics[NUM_EXAMPLES])
                    tensors = self.decode_reply(record) if decode else {}
                    bad = [name for name, values in tensors.items() if not np.all(np.isfinite(values))]
                    if bad:
                        raise ValueError(f"non-finite values (NaN or inf) in {bad[:3]}")
                    usable = ClientResult(self.client_of(node), examples, tensors, metrics)
                except (KeyError, TypeError, ValueError, PayloadError) as err:
                    reason = f"dropped its reply: {type(err).__name__}: {err}"
            self.meter.record(server_round, "up", self.client_of(node), kind, record_bytes(record),
                              serialized_size(reply), float32_bytes(usable.tensors) if usable else 0)
            if usable is None:
                log(WARNING, "round %d: node %d (partition %d) failed: %s", server_round, node,
                    self.client_of(node), reason)
                continue
            received.append(usable)
        received.sort(key=lambda r: r.partition)
        return received


def check_finite(server_round: int, tensors: dict[str, np.ndarray], what: str) -> None:
    """Raise DivergedError naming the round if any of ``tensors`` holds NaN or inf."""
    bad = [name for name, values in tensors.items() if not np.all(np.isfinite(values))]
    if bad:
        raise DivergedError(f"the run diverged in round {server_round}: the {what} is non-finite in "
                            f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}", server_round)


def _tally(replies: Iterable[Message], seen: list[int]) -> Iterable[Message]:
    """``replies`` as they come, noting each sender's node id in ``seen``."""
    for reply in replies:
        seen.append(reply.metadata.src_node_id)
        yield reply


def _reply_metrics(content: RecordDict, with_arrays: bool) -> MetricRecord:
    """A reply's metrics, once it is known to hold exactly the records its kind carries (PayloadError if not)."""
    expected = {ARRAYS, METRICS} if with_arrays else {METRICS}
    if set(content.keys()) != expected:
        raise PayloadError(f"the reply holds the records {sorted(content.keys())[:5]}, expected {sorted(expected)}")
    if not isinstance(content[METRICS], MetricRecord) or (with_arrays and not isinstance(content[ARRAYS],
                                                                                          ArrayRecord)):
        raise PayloadError("the reply's records are of the wrong types (arrays: ArrayRecord, metrics: MetricRecord)")
    return content[METRICS]


def _example_count(value: object) -> int:
    """A reply's example count, which must be a positive whole number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or value != int(value) or value <= 0:
        raise ValueError(f"it reports {value!r} examples")
    return int(value)


def _timing_summary(received: list[ClientResult]) -> dict[str, float]:
    """``<timing>_mean`` and ``<timing>_max`` over the replies that report each client timing."""
    out: dict[str, float] = {}
    for key in TIMINGS:
        values = [float(r.metrics[key]) for r in received if isinstance(r.metrics.get(key), (int, float))]
        if values:
            name = key.replace("-", "_")
            out[f"{name}_mean"], out[f"{name}_max"] = float(np.mean(values)), float(np.max(values))
    return out


def _weighted_metrics(received: list[ClientResult]) -> MetricRecord:
    """Example-weighted mean of every numeric metric the replies share."""
    total = sum(r.examples for r in received)
    shared = set.intersection(*(set(r.metrics.keys()) for r in received)) - {NUM_EXAMPLES, PARTITION_ID}
    out = {k: sum(float(r.metrics[k]) * r.examples for r in received) / total
           for k in sorted(shared) if all(isinstance(r.metrics[k], (int, float)) for r in received)}
    out[NUM_EXAMPLES] = total
    return MetricRecord(out)
