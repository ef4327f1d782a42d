"""Compressed FedAvg: sparse differential updates, upstream only or in both directions.

FedAvg over decoded deltas (DESIGN 3). It reuses `FedAvg`'s round loop and changes its
three hooks:

* :meth:`DifferentialFedAvg.decode_reply`: a reply carries one coded payload of the
  client's update ``U`` (a subset of the exchanged tensors in partial mode);
* :meth:`DifferentialFedAvg.aggregate`: ``step = server_lr * weighted_mean(U)``. Upstream
  only, ``W_{t+1} = W_t + step`` and the next round sends the dense model. Bidirectional,
  the server compresses ``step`` (plus its own residual) into the downstream payload ``P``
  and defines ``W_{t+1} = W_t + decode(P)``; under FSFL the scales are then folded into the
  weights (or kept), identically on every party;
* :meth:`DifferentialFedAvg.train_messages`: bidirectional, each sampled client gets one
  message that brings it from the version it holds to ``W_t`` exactly (the grid catch-up of
  `fedcomp.exchange.catchup`: count differences since its version or since ``W_0``, the folded
  grid updates replayed, or the float32 model, whichever is smallest), with the model's digest
  so that the client can check it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from torch import nn

from fedcomp.exchange.catchup import REPLAY, ServerSync, grid_fold, settings_grid
from fedcomp.exchange.channels import Encoded, dense_record, sender_state
from fedcomp.errors import DivergedError, PayloadError
from fedcomp.compress.catchup import OffGrid
from fedcomp.compress.params import ParamManifest
from fedcomp.exchange.protocol import ARRAYS, BASE_VERSION, CONFIG, DIGEST, FULL_MODEL, VERSION
from fedcomp.local.scaling import effective, is_scale
from fedcomp.exchange.updates import UpdateSettings, apply_update, model_digest, weighted_mean
from strategies.fedavg import FedAvg, stop_if_non_finite
from strategies.replies import ClientResult
from strategies.metering import content_size, meter_sent


class DifferentialFedAvg(FedAvg):
    """FedAvg over compressed client updates, with compressed downstream updates when bidirectional.

    Parameters
    ----------
    manifest : ParamManifest
        The exchanged tensors (the model's, plus FSFL scales), the same on every party.
    settings : UpdateSettings
        Each direction's compression, FSFL, partial groups, server learning rate, history.
    sent : list of str
        The tensors clients send (``partial.groups``), a subset of ``manifest``.
    model : nn.Module
        The seed-built model (``W_0`` and the grid of the catch-up come from it).
    seed : int
        Seeds the server's own sender (random sparsifiers of the downstream).
    **kwargs
        As for `FedAvg` (sampler, meter, bound, on_client_update, min_results).
    """

    replies_are_updates = True

    def __init__(self, manifest: ParamManifest, settings: UpdateSettings, sent: list[str], model: nn.Module,
                 seed: int = 0, **kwargs) -> None:
        super().__init__(manifest, **kwargs)
        self.settings = settings
        self.sent = set(sent)
        self.upstream = settings.channel("up", manifest, 0)
        if settings.bidirectional:
            self.downstream = settings.channel("down", manifest, seed)
            self.sync = ServerSync(settings_grid(settings, model), self.downstream, settings.history,
                                   grid_fold(settings))
        self.server_state: dict[str, np.ndarray] = {}  # the server's sender state (error-feedback residual)
        self.client_version: dict[int, int] = {}  # partition -> version it holds (absent: 0, W_0 from the seed)

    @property
    def version(self) -> int:
        """Downstream updates applied to ``W_0`` so far (0 when upstream only)."""
        return self.sync.version if self.settings.bidirectional else 0

    # ---- what serve() reads ----------------------------------------------------------

    def initial_arrays(self, model_tensors: dict[str, np.ndarray]) -> ArrayRecord:
        """The seed-built model plus unit FSFL scales (``W_0``, never transmitted when bidirectional)."""
        scales = {t.name: np.ones(t.shape, np.float32) for t in self.manifest.tensors if is_scale(t.name)}
        return dense_record({**model_tensors, **scales})

    def model_tensors(self, arrays: ArrayRecord) -> dict[str, np.ndarray]:
        """The plain model of a global record: FSFL scales folded into the weights."""
        return effective(super().model_tensors(arrays))

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """`FedAvg.state_dict` plus the server's sender state, the catch-up history and the version each
        client holds."""
        arrays, meta = super().state_dict()
        arrays |= self.server_state
        if self.settings.bidirectional:
            sync_arrays, meta["sync"] = self.sync.state_dict()
            arrays |= {f"sync/{k}": v for k, v in sync_arrays.items()}
        meta["client_version"] = {str(k): v for k, v in self.client_version.items()}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], server_round: int) -> None:
        """Continue from what `state_dict` returned after ``server_round``."""
        super().load_state_dict(arrays, meta, server_round)
        self.server_state = sender_state(arrays)
        if self.settings.bidirectional:
            self.sync.load_state_dict({k[len("sync/"):]: v for k, v in arrays.items() if k.startswith("sync/")},
                                      meta["sync"])
        self.client_version = {int(k): int(v) for k, v in meta["client_version"].items()}

    # ---- hooks ---------------------------------------------------------------------

    def train_messages(self, server_round: int, nodes: list[int], config: ConfigRecord) -> list[Message]:
        """Unidirectional: the dense model to all. Bidirectional: each node's catch-up to ``W_t``."""
        if not self.settings.bidirectional:
            return super().train_messages(server_round, nodes, config)
        config[VERSION] = self.version
        config[DIGEST] = model_digest(self._global, self.manifest)
        # bounded by the clients of the last sync.history rounds: the others are treated as unknown anyway
        self.client_version = {p: v for p, v in self.client_version.items() if not self.sync.as_if_unknown(v)}
        contents: dict[int, tuple[Encoded, RecordDict, int]] = {}
        messages = []
        for node in nodes:
            partition = self.sampler.client_of(node)
            if node in self.sampler.partition_of:
                held = self.client_version.get(partition, 0)
                self.client_version[partition] = FULL_MODEL  # until its reply says otherwise
            else:  # a node not heard from yet: a catch-up from W_0 (base 0) suits whatever it holds
                held = 0
            if held not in contents:
                encoded, base, replay = self.sync.catch_up(held)
                content = RecordDict({ARRAYS: encoded.record,
                                      CONFIG: ConfigRecord({**config, BASE_VERSION: base, REPLAY: int(replay)})})
                contents[held] = (encoded, content, content_size(content))
            encoded, content, shared = contents[held]
            msg = Message(content, node, MessageType.TRAIN)
            meter_sent(self.meter, server_round, partition, "train", encoded, msg, shared)
            messages.append(msg)
        return messages

    def decode_reply(self, record: ArrayRecord | None) -> dict[str, np.ndarray]:
        """The client's update: one payload over the tensors it sends."""
        if record is None:
            raise PayloadError("the reply carries no arrays")
        update = self.upstream.decode(record, self.manifest)
        unexpected = sorted(set(update) - self.sent)
        if unexpected:
            raise PayloadError(f"the update carries tensors this run does not send: {unexpected[:5]}")
        return update

    def received(self, results: list[ClientResult]) -> None:
        """A client whose reply says it holds ``W_t`` is in sync again, even in a round left below
        ``server.min_results`` (``W_t`` is then still the current model)."""
        for r in results:
            if r.metrics.get(VERSION) == self.version:
                self.client_version[r.partition] = self.version

    def aggregate(self, server_round: int, results: list[ClientResult]) -> dict[str, np.ndarray]:
        """``W_{t+1}`` from the clients' updates (see the module docstring)."""
        mean = weighted_mean([r.tensors for r in results], [float(r.examples) for r in results])
        step = {k: (np.float32(self.settings.server_lr) * v).astype(np.float32) for k, v in mean.items()}
        if self.settings.bidirectional:
            stop_if_non_finite(server_round, step, "aggregated update")
            try:
                new_global, self.server_state = self.sync.advance(step, self.server_state)
            except OffGrid as err:
                raise DivergedError(f"the run diverged in round {server_round}: {err}", server_round) from None
            return new_global
        return apply_update(self._global, step, self.settings.fold)
