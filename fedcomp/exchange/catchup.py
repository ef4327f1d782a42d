"""Catch-up on the wire: both sides of the grid protocol of `fedcomp.compress.catchup` (issue 18).

In a bidirectional run the server keeps the global model as ``W_0`` plus integer counts on a
fixed grid (:class:`~fedcomp.compress.catchup.ModelGrid`). Each round it puts the decoded
downstream update on the grid (:meth:`ServerSync.advance`); each sampled client then gets
one message that brings it from the version it holds to ``W_t`` bit for bit
(:meth:`ServerSync.catch_up`), the smallest of: one payload of the count differences since
that version (or since ``W_0`` when the server no longer remembers it); the per-round grid
updates it missed, replayed, when the scales are folded (the client folds on the grid itself,
as the server did, so a replay stays as sparse as the updates while a difference carries every
weight the folds moved); or the float32 model. The client applies it with
:func:`client_catch_up` and checks the digest.

The grid of each tensor is the downstream quantizer's step when it has a fixed one
(uniform with ``qp`` or ``step``), otherwise the spec's ``qp`` (``DEFAULT_QP`` unless set);
FSFL scales use ``fsfl.scale_qp``. Whatever the quantizer, :meth:`ModelGrid.snap` puts its
reconstruction on the grid and the rounding leftover joins the server's residual.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from flwr.app import ArrayRecord
from torch import nn

from fedcomp.compress.catchup import Counts, CountHistory, GridStep, ModelGrid, add_counts, parse_grid
from fedcomp.compress.codec.wire import FLAG_FULL_MODEL, decode_payload
from fedcomp.compress.compression import DEFAULT_QP, CompressionSpec, decompress
from fedcomp.compress.params import ParamManifest
from fedcomp.errors import PayloadError
from fedcomp.exchange.channels import Encoded, PayloadChannel, float32_bytes, max_payload_bytes, payload_record, \
    record_payloads
from fedcomp.exchange.protocol import FULL_MODEL
from fedcomp.exchange.updates import UpdateSettings, model_digest
from fedcomp.local.scaling import fold, is_scale

RESIDUAL = "residual/"
REPLAY = "fedcomp-replay"  # config: 1 when the message replays per-round grid updates (else one difference)
COUNTS = "counts/"  # a client's state: its counts (absent after a float32 catch-up)


def grid_step(spec: CompressionSpec) -> GridStep:
    """The fixed grid of tensors sent with ``spec``: its explicit step, else its qp (DEFAULT_QP if unset)."""
    if spec.step is not None:
        return GridStep.from_step(spec.step)
    return GridStep.from_qp(spec.qp if spec.qp is not None else DEFAULT_QP, spec.qp_density)


def model_grid(manifest: ParamManifest, base: Mapping[str, np.ndarray], down: CompressionSpec,
               scale_qp: int, grid: str = "down") -> ModelGrid:
    """The grid of a run: ``scale_qp`` for FSFL scales; for the model's tensors ``down``'s step
    (``grid="down"``), or (``grid="rms:R"``) R times the root mean square of the tensor in ``W_0``,
    so that each layer's grid follows its own scale (a tensor that is 0 in ``W_0`` keeps ``down``'s step).
    """
    ratio, fallback = parse_grid(grid), grid_step(down)
    scales = GridStep.from_qp(scale_qp, down.qp_density)

    def weights(name: str) -> GridStep:
        rms = float(np.sqrt(np.mean(np.square(base[name], dtype=np.float64)))) if ratio else 0.0
        return GridStep.from_step(ratio * rms) if np.float32(ratio * rms) > 0 else fallback

    return ModelGrid(manifest, base, {n: scales if is_scale(n) else weights(n) for n in manifest.names})


def settings_grid(settings: UpdateSettings, model: nn.Module) -> ModelGrid:
    """The grid of a run from its settings and seed-built model (the same on every party)."""
    return model_grid(settings.manifest(model), settings.initial_global(model), settings.down, settings.scale_qp,
                      settings.grid)


def grid_fold(settings: UpdateSettings) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None:
    """FSFL's fold when the run folds its scales (done on the grid, by the server and by a replaying client)."""
    return fold if settings.fold and settings.scaled else None


class CatchUp(NamedTuple):
    """A catch-up message: its content, the version it applies to, and whether it replays updates."""

    encoded: Encoded
    base: int
    replay: bool


class OutOfSync(RuntimeError):
    """The client cannot reach the server's model from what it holds (the server resends it from ``W_0``)."""


class ServerSync:
    """The server's side: the counts of every version it remembers, and the catch-up payloads.

    Parameters
    ----------
    grid : ModelGrid
        The run's grid (``W_0`` and each tensor's step).
    channel : PayloadChannel
        The downstream channel (its codec codes the catch-up payloads).
    keep : int
        How many versions' changes to remember (``sync.history``); older clients start from ``W_0``.
    fold : callable, optional
        FSFL's fold, applied on the grid after every update (None: scales are kept).
    """

    def __init__(self, grid: ModelGrid, channel: PayloadChannel, keep: int,
                 fold: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None) -> None:
        self.grid, self.channel, self.fold = grid, channel, fold
        self.history = CountHistory(grid.zeros(), keep=keep)
        self.updates: deque[tuple[int, bytes]] = deque(maxlen=keep)  # (version, coded grid update before the fold)
        self.codec = channel.spec.build_codec()
        self._cache: dict[int | str, CatchUp] = {}  # held version -> its message, this version
        self._cache_version = 0

    @property
    def version(self) -> int:
        return self.history.version

    def model(self) -> dict[str, np.ndarray]:
        """``W_t``."""
        return self.grid.materialize(self.history.counts)

    def advance(self, update: Mapping[str, np.ndarray], state: dict[str, Any]) -> tuple[dict[str, np.ndarray],
                                                                                         dict[str, Any]]:
        """Compress ``update`` downstream (error feedback with the residual in ``state``), put it on the grid,
        fold FSFL scales on the grid; return ``W_{t+1}`` and the sender's new state.

        What rounding to the grid leaves over is added to the residual of each tensor that has one.
        """
        encoded, state = self.channel.encode(update, state)
        symbols, leftover = self.grid.snap(encoded.reconstruction)
        counts = add_counts(self.history.counts, symbols)
        if self.fold is not None:
            self.updates.append((self.version + 1, self.grid.encode(symbols, self.codec)))
            counts, folded = self.grid.refold(counts, self.fold)
            leftover = {k: leftover.get(k, 0) + folded.get(k, 0) for k in set(leftover) | set(folded)}
        state = dict(state)
        for name, rest in leftover.items():
            key = RESIDUAL + name
            if key in state and np.any(rest):
                state[key] = (np.asarray(state[key], dtype=np.float32) + rest).astype(np.float32)
        self.history.advance(counts)
        return self.model(), state

    def as_if_unknown(self, held: int) -> bool:
        """Whether a client holding version ``held`` gets the very catch-up of one the server knows nothing
        of (which it treats as holding ``W_0``): ``held`` is 0, or forgotten, or :data:`FULL_MODEL` once no
        replay from ``W_0`` is possible; then the server need not remember it."""
        if held == 0 or (held > 0 and not self.history.remembers(held)):
            return True
        return held == FULL_MODEL and self.version > 0 and len(self.updates) < self.version

    def catch_up(self, held: int) -> CatchUp:
        """The one message that brings a client holding version ``held`` to ``W_t`` (the smallest candidate).

        Base ``held``: count differences since it, or (folded scales) the grid updates since it,
        replayed; base 0: the counts since ``W_0`` (the server no longer remembers ``held``, or it is
        unknown); base :data:`FULL_MODEL`: the float32 model. A client at ``W_t`` gets an empty record.
        """
        if held == self.version:
            return CatchUp(Encoded(ArrayRecord(), 0, 0, {}), held, False)
        cache = self._cached()
        if held in cache:
            return cache[held]
        dense = float32_bytes(self.grid.base)
        diff = self.history.since(held) if held >= 0 else None
        payload = self.grid.encode(diff if diff is not None else self.history.since(0), self.codec)
        candidates = [CatchUp(Encoded(payload_record([payload]), len(payload), dense, {}),
                              held if diff is not None else 0, False)]
        missed = [p for v, p in self.updates if v > held] if held >= 0 else []
        if missed and len(missed) == self.version - held:
            candidates.append(CatchUp(Encoded(payload_record(missed), sum(map(len, missed)), dense * len(missed), {}),
                                      held, True))
        # the first smallest: a difference before a replay, either before the float32 model
        cache[held] = min([*candidates, self._float32_model()], key=lambda m: m.encoded.payload_bytes)
        return cache[held]

    def _cached(self) -> dict[int | str, CatchUp]:
        """The messages built for the current version (emptied when the version moves on)."""
        if self._cache_version != self.version:
            self._cache, self._cache_version = {}, self.version
        return self._cache

    def _float32_model(self) -> Encoded:
        cache = self._cached()
        if "float32" not in cache:
            cache["float32"] = CatchUp(self.channel.encode_model(self.model()), FULL_MODEL, False)
        return cache["float32"]

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The history's arrays and metadata (`CountHistory.state_dict`), and the replayable updates."""
        arrays, meta = self.history.state_dict()
        arrays |= {f"update/{v}": np.frombuffer(p, np.uint8) for v, p in self.updates}
        return arrays, {**meta, "updates": [v for v, _ in self.updates]}

    def load_state_dict(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Continue from what :meth:`state_dict` returned."""
        self.history = CountHistory.from_state(arrays, meta)
        self.updates = deque(((int(v), np.asarray(arrays[f"update/{v}"], np.uint8).tobytes()) for v in meta["updates"]),
                             maxlen=self.updates.maxlen)
        self._cache, self._cache_version = {}, -1


def client_catch_up(grid: ModelGrid, record: ArrayRecord, base: int, target: int, digest: int,
                    held: Mapping[str, np.ndarray], held_version: int, replay: bool = False,
                    fold: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
                    ) -> tuple[dict[str, np.ndarray], Counts | None]:
    """The client's side: ``W_target`` from what it holds and the server's one message; raise OutOfSync
    if that is impossible or the result does not match ``digest``.

    ``held`` is the client's state (its counts under ``counts/<name>``), ``held_version`` their version
    (0 with no counts: ``W_0``). ``replay``: the message carries one grid update per missed version,
    each followed by ``fold`` on the grid (FSFL's fold; None: scales are kept). Returns the model and
    its counts (None after a float32 catch-up).
    """
    manifest = grid.manifest
    payloads = record_payloads(record, max_payload_bytes(manifest)) if len(record.keys()) else []
    expected = target - base if replay else min(len(payloads), 1)  # a replay: one per version, else at most one
    if len(payloads) != expected:
        raise PayloadError(f"a catch-up from version {base} to {target} carries {len(payloads)} payloads")
    counts: Counts | None
    if base == FULL_MODEL:
        if not payloads or not decode_payload(payloads[0], manifest).flags & FLAG_FULL_MODEL:
            raise OutOfSync("a float32 catch-up must carry one payload flagged as a full model")
        model, counts = decompress(payloads[0], manifest), None
    else:
        mine = {k[len(COUNTS):]: v for k, v in held.items() if k.startswith(COUNTS)}
        if base == 0:
            counts = grid.zeros()
        elif base == held_version and len(mine) == len(manifest):
            counts = {k: np.asarray(v, dtype=np.int32) for k, v in mine.items()}
        else:
            raise OutOfSync(f"this client holds model version {held_version}, the server's catch-up starts "
                            f"from version {base}")
        for payload in payloads:
            counts = add_counts(counts, grid.decode(payload))
            if replay and fold is not None:
                counts = grid.refold(counts, fold)[0]
        model = grid.materialize(counts)
    if model_digest(model, manifest) != digest:
        raise OutOfSync(f"after the catch-up, this client's model does not match the server's version {target}")
    return model, counts
