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
(`strategies.differential.DifferentialFedAvg` sends compressed differences); none of them
has to call anything. What every strategy does alike is done around the hooks, by small
collaborators: the `Sampler` (which nodes, by partition id; before the first round it asks
every node once for its partition id, a ``query`` message metered as round 0, kind
``setup``), the `UpdateBound` (applied to every decoded reply), the reply checks of
`strategies.replies`, the metering of `strategies.metering`, and ``on_client_update`` (the
update dump), which sees every aggregated round's updates before `FedAvg.aggregate` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedcomp.errors import DivergedError, PayloadError
from fedcomp.records.meter import TransferMeter, TransferRecord
from fedcomp.compress.params import ParamManifest
from fedcomp.exchange.channels import Channel, DenseChannel, dense_record, float32_bytes, record_tensors
from fedcomp.exchange.protocol import ARRAYS, SERVER_ROUND
from fedcomp.exchange.updates import weighted_mean
from strategies.metering import broadcast, meter_reply
from strategies.replies import (CLIENT_FAULTS, ClientResult, UpdateBound, check_finite, example_count, log_missing,
                                reply_metrics, timing_summary, weighted_metrics)
from strategies.sampling import Sampler


UpdateSink = Callable[[int, dict[int, dict[str, np.ndarray]]], None]


class FedAvg(Strategy):
    """Federated averaging of full local models, weighted by local example counts.

    Parameters
    ----------
    manifest : ParamManifest
        The tensors exchanged (names and shapes), the same on every party.
    sampler : Sampler, optional
        Which nodes train (and evaluate) each round (default: all, no federated evaluation, seed 0).
    meter : TransferMeter, optional
        Where every message's sizes are recorded.
    bound : UpdateBound, optional
        An L2 bound on each client's update, applied to every reply as it is decoded (default: none).
    on_client_update : callable, optional
        Called once per aggregated round, before `aggregate`, with ``(round, {partition: update})``
        over its usable training replies (an update is ``local - global``).
    min_results : int
        The fewest usable training replies a round needs; below it the global model stays
        as it was (the round is logged as such and the run goes on).
    max_failed_rounds : int
        After this many rounds in a row in which every sampled client failed, the run stops
        with `DivergedError` (0: never); so does a non-finite global model, at once.
    """

    #: Whether a training reply decodes to the client's update (True) or to its local model.
    replies_are_updates = False

    def __init__(self, manifest: ParamManifest, *, sampler: Sampler | None = None,
                 meter: TransferMeter | None = None, bound: UpdateBound | None = None,
                 on_client_update: UpdateSink | None = None, min_results: int = 1,
                 max_failed_rounds: int = 3) -> None:
        self.manifest = manifest
        self.sampler = sampler or Sampler()
        self.meter = meter or TransferMeter()
        self.bound = bound or UpdateBound()
        self.on_client_update = on_client_update
        self.min_results = min_results
        self.downstream: Channel = DenseChannel()
        self.upstream: Channel = DenseChannel()
        self.resumed_from = 0  # the checkpointed round this strategy continued from (0: a fresh run)
        self.client_timings: dict[int, dict[str, float]] = {}  # the latest round's only
        self._global: dict[str, np.ndarray] = {}
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
        self.sampler.partition_of, self.sampler.population = {}, []
        self.resumed_from = server_round

    # ---- Flower hooks --------------------------------------------------------------

    def summary(self) -> None:
        """Flower's hook: log this strategy's sampling and channels."""
        log(INFO, "\t├──> fedcomp %s: fraction_train=%.2f, min_train_nodes=%d, fraction_evaluate=%.2f",
            type(self).__name__, self.sampler.fraction_train, self.sampler.min_train_nodes,
            self.sampler.fraction_evaluate)
        log(INFO, "\t└──> channels: down=%s, up=%s", type(self.downstream).__name__, type(self.upstream).__name__)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's hook: sample the round's nodes and build their training messages (`train_messages`).

        Parameters
        ----------
        server_round : int
            The current round.
        arrays : ArrayRecord
            The global model ``W_t``.
        config : ConfigRecord
            The round's configuration (``server-round`` is added).
        grid : Grid
            Where the nodes are.

        Returns
        -------
        iterable of Message
            One metered training message per sampled node.
        """
        nodes = self._sample(grid, server_round, "train")
        self._global = record_tensors(arrays)
        config[SERVER_ROUND] = server_round
        return self.train_messages(server_round, nodes, config)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook: meter, check and decode the replies, then the next global model (`aggregate`).

        Parameters
        ----------
        server_round : int
            The current round.
        replies : iterable of Message
            The replies that came back within the round's timeout.

        Returns
        -------
        tuple
            The new global model and the example-weighted metrics, or ``(None, None)`` when fewer
            than ``min_results`` replies were usable.
        """
        replied: list[int] = []
        decoded = self._receive(server_round, _tally(replies, replied), "train", decode=True)
        self.received(decoded)
        timed_out = log_missing(server_round, self._sent_to, replied, self.sampler.describe)
        self.client_timings = {server_round: {
            **timing_summary(decoded), "clients_sampled": len(self._sent_to),
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
        if self.on_client_update is not None:
            self.on_client_update(server_round, {r.partition: r.tensors if self.replies_are_updates else
                                                 {k: v - self._global[k] for k, v in r.tensors.items()}
                                                 for r in decoded})
        new_global = self.aggregate(server_round, decoded)
        stop_if_non_finite(server_round, new_global, "global model")
        return dense_record(new_global), weighted_metrics(decoded)

    # ---- hooks a subclass may override (none of them has to call anything) -----------

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
        return broadcast(self.meter, server_round, encoded, config, nodes, MessageType.TRAIN, self.sampler.client_of)

    def decode_reply(self, record: ArrayRecord | None) -> dict[str, np.ndarray]:
        """The tensors of one training reply's ``arrays`` record (before the norm bound).

        Parameters
        ----------
        record : ArrayRecord or None
            The reply's ``arrays`` (None when it has none).

        Returns
        -------
        dict
            Here the client's full local model. Raise PayloadError (or ReplyError) for what
            does not fit: the reply is then that client's failure.
        """
        if record is None:
            raise PayloadError("the reply carries no arrays")
        return self.upstream.decode(record, self.manifest)

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
        return weighted_mean([r.tensors for r in results], [float(r.examples) for r in results])

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Flower's hook: the global model to the nodes sampled for federated evaluation (none when off).

        Parameters and Returns as for `configure_train`.
        """
        nodes = self._sample(grid, server_round, "evaluate")
        if not nodes:
            return []
        config[SERVER_ROUND] = server_round
        encoded, _ = DenseChannel().encode(record_tensors(arrays))
        return broadcast(self.meter, server_round, encoded, config, nodes, MessageType.EVALUATE,
                         self.sampler.client_of)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Flower's hook: the example-weighted metrics of the usable evaluation replies (None if there are none).

        Parameters
        ----------
        server_round : int
            The current round.
        replies : iterable of Message
            The evaluation replies.
        """
        replied: list[int] = []
        received = self._receive(server_round, _tally(replies, replied), "evaluate", decode=False)
        log_missing(server_round, self._sent_to, replied, self.sampler.describe)
        return weighted_metrics(received) if received else None

    # ---- helpers -------------------------------------------------------------------

    def _sample(self, grid: Grid, server_round: int, phase: str) -> list[int]:
        """The sampled nodes of ``phase``, remembered as the ones asked (a resumed run's setup is not metered)."""
        self._sent_to = self.sampler.nodes(grid, server_round, phase, None if self.resumed_from else self.meter)
        return self._sent_to

    def _receive(self, server_round: int, replies: Iterable[Message], kind: str,
                 decode: bool) -> list[ClientResult]:
        """Meter each reply; return the usable ones in partition order.

        A reply that fails with a `CLIENT_FAULTS` error (a payload or a reply that does not fit) is
        logged with its node and reason and dropped; it never ends the round. Any other error is
        the server's own bug and raises.
        """
        received = []
        for reply in replies:
            node = reply.metadata.src_node_id
            usable: ClientResult | None = None
            reason = reply.error.reason if reply.has_error() else ""
            if not reply.has_error():
                try:
                    metrics = reply_metrics(reply.content, decode)
                    self._learn(server_round, node, metrics)
                    examples = example_count(metrics)
                    tensors = {}
                    if decode:
                        tensors = self.decode_reply(reply.content.array_records.get(ARRAYS))
                        check_finite(tensors)
                        tensors = self.bound.apply(tensors, None if self.replies_are_updates else self._global)
                    usable = ClientResult(self.sampler.client_of(node), examples, tensors, metrics)
                except CLIENT_FAULTS as err:
                    reason = f"dropped its reply: {type(err).__name__}: {err}"
            client = self.sampler.client_of(node)
            meter_reply(self.meter, server_round, client, kind, reply, float32_bytes(usable.tensors) if usable else 0)
            if usable is None:
                log(WARNING, "round %d: %s failed: %s", server_round, self.sampler.describe(node), reason)
                continue
            received.append(usable)
        received.sort(key=lambda r: r.partition)
        return received


    def _learn(self, server_round: int, node: int, metrics: MetricRecord) -> None:
        """Learn ``node``'s partition from its reply (``server.discovery = sampled``); the round's messages
        already metered under its node id are then renamed."""
        known = node in self.sampler.partition_of
        self.sampler.learn(node, metrics)
        if not known and node in self.sampler.partition_of:
            self.meter.rename(server_round, node, self.sampler.partition_of[node])


def stop_if_non_finite(server_round: int, tensors: dict[str, np.ndarray], what: str) -> None:
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
