"""Sparse differential updates as both sides see them (DESIGN 3, 4.3-4.6).

Server and clients build the same :class:`UpdateSettings` from the run's settings, the
same exchanged manifest (the model's tensors, plus FSFL's filter scales) and apply updates
with the same float32 arithmetic (:func:`apply_update`), so that a bidirectional run keeps
every synchronised client's model equal to the server's bit for bit, which
:func:`model_digest` lets a client check.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from fedcomp.compress.catchup import valid_grid
from fedcomp.exchange.channels import Channel, DenseChannel, PayloadChannel
from fedcomp.compress.compression import CompressionSpec, direction_spec
from fedcomp.errors import ReplyError
from fedcomp.compress.params import ParamManifest, state_arrays
from fedcomp.local.partial import select
from fedcomp.local.scaling import fold, is_scale, scale_specs, unit_scales
from fedcomp.settings import NON_NEGATIVE, POSITIVE, Check, build, setting

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class UpdateSettings:
    """What a run exchanges and how: each direction's compression, FSFL, partial groups."""

    up: CompressionSpec
    down: CompressionSpec
    fsfl: str = setting("fsfl.mode", "off", "filter-wise scaling: off, joint (scales train with the weights) or "
                        "compensate (scales train after sparsification, on the weights the server will reconstruct)",
                        choices=("off", "joint", "compensate"))
    fold: bool = setting("fsfl.fold", True, "fold the scales into the weights after every round (false: keep them)")
    scale_qp: int = setting("fsfl.scale_qp", -40, "NNC qp of the dense scale updates (-40: step 2**-10)")
    scale_lr: float = setting("fsfl.scale_lr", 0.05, "learning rate of the filter scales (SGD, no momentum)",
                              check=POSITIVE)
    scale_epochs: int = setting("fsfl.scale_epochs", 1, "local epochs of the scales-only pass (compensate mode)",
                                check=POSITIVE)
    partial: str = setting("partial.groups", "", "parameter groups clients train and send: scales, bias, bn, head, "
                           "last:N or name globs, comma-separated (empty: the whole model)")
    server_lr: float = setting("server.lr", 1.0, "server learning rate: the global step is server.lr x the "
                               "aggregated update", check=POSITIVE)
    history: int = setting("sync.history", 20, "model versions whose changes the server remembers for catch-up "
                           "(a client holding an older one catches up from W_0)", check=NON_NEGATIVE)
    grid: str = setting("sync.grid", "down", "the fixed grid the global model lives on (bidirectional runs): down "
                        "(the downstream quantizer's step for every tensor) or rms:R (per tensor, R x its root mean "
                        "square in W_0)", check=Check(valid_grid, "down or rms:R with R > 0"))

    @classmethod
    def from_config(cls, config: Mapping) -> "UpdateSettings":
        return build(cls, config, up=direction_spec(config, "up"), down=direction_spec(config, "down"))

    @property
    def differential(self) -> bool:
        """Clients send compressed differences (otherwise: plain FedAvg of local models)."""
        return not self.up.lossless_dense

    @property
    def bidirectional(self) -> bool:
        """The server sends compressed aggregated updates instead of the dense model."""
        return not self.down.lossless_dense

    @property
    def scaled(self) -> bool:
        return self.fsfl != "off"

    def manifest(self, model: nn.Module) -> ParamManifest:
        """The exchanged tensors: the model's, then one scale vector per Conv/Linear layer under FSFL."""
        base = ParamManifest.from_model(model)
        return ParamManifest(base.tensors + tuple(scale_specs(model))) if self.scaled else base

    def sent_names(self, model: nn.Module, manifest: ParamManifest) -> list[str]:
        """The tensors a client trains and sends (``partial.groups``; all by default)."""
        return select(model, manifest.names, self.partial)

    def initial_global(self, model: nn.Module) -> Tensors:
        """``W_0`` as every party builds it from the seed (scales at 1 under FSFL)."""
        tensors = state_arrays(model)
        return {**tensors, **unit_scales(model)} if self.scaled else tensors

    def check(self, model: nn.Module) -> None:
        """Fail now, with one ConfigError, on what would fail mid-run: partial groups this model
        lacks, a codec this installation lacks."""
        manifest = self.manifest(model)
        sent = self.sent_names(model, manifest)
        probe = {sent[0]: np.zeros(manifest[manifest.index(sent[0])].shape, np.float32)}
        for direction in ("up", "down"):
            self.channel(direction, manifest, 0).encode(probe)

    def channel(self, direction: str, manifest: ParamManifest, seed: int) -> Channel:
        """The channel of ``direction`` (up or down); ``seed`` seeds this sender's random choices."""
        spec = self.up if direction == "up" else self.down
        if spec.lossless_dense:
            return DenseChannel()
        fine = CompressionSpec.from_dict({"quantizer": "uniform", "qp": self.scale_qp, "codec": spec.codec,
                                          "error_feedback": spec.error_feedback})
        overrides = {t.name: fine for t in manifest.tensors if is_scale(t.name)}
        return PayloadChannel(spec, manifest, overrides, seed=seed)


def apply_update(tensors: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray], fold_scales: bool) -> Tensors:
    """``W + dW`` for every tensor the update carries, then (optionally) the scales folded in.

    Float32 throughout, the same on the server and on every client.
    """
    out = dict(tensors)
    for name, delta in update.items():
        out[name] = (tensors[name] + np.asarray(delta, dtype=np.float32)).astype(np.float32)
    return fold(out) if fold_scales else out


def model_digest(tensors: Mapping[str, np.ndarray], manifest: ParamManifest) -> int:
    """CRC32 over the float32 bytes of every exchanged tensor, in manifest order."""
    crc = 0
    for name in manifest.names:
        crc = zlib.crc32(np.ascontiguousarray(tensors[name], dtype=np.float32).tobytes(), crc)
    return crc


def weighted_mean(items: Sequence[Mapping[str, Any]], weights: Sequence[float],
                  dtype: type = np.float32) -> dict[str, np.ndarray]:
    """Per key, the weighted mean over the items that carry it: float64 sums, a ``dtype`` result.

    The one weighted mean of fedcomp: of client models and updates (float32 tensors), and of
    client metrics (scalars, ``dtype=np.float64``).
    """
    sums: dict[str, np.ndarray] = {}
    totals: dict[str, float] = {}
    for item, weight in zip(items, weights):
        for name, values in item.items():
            sums[name] = sums.get(name, 0.0) + weight * np.asarray(values, dtype=np.float64)
            totals[name] = totals.get(name, 0.0) + weight
    return {name: (sums[name] / totals[name]).astype(dtype) for name in sums}


def bound_update(update: Mapping[str, np.ndarray], max_norm: float, action: str) -> Tensors:
    """``update`` within an L2 bound over all its tensors: scaled down (``clip``) or refused
    with ReplyError (``refuse``); unchanged when ``max_norm`` is 0 or it is within the bound."""
    out = {k: np.asarray(v, dtype=np.float32) for k, v in update.items()}
    if max_norm <= 0:
        return out
    norm = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in out.values())))
    if norm <= max_norm:
        return out
    if action == "refuse":
        raise ReplyError(f"its update's L2 norm {norm:.4g} exceeds server.max_update_norm = {max_norm:g}")
    factor = np.float32(max_norm / norm)
    return {k: (v * factor).astype(np.float32) for k, v in out.items()}
