"""Compressed updates end to end: a small spec, a per-sender pipeline, and the decoder.

A :class:`CompressionSpec` names a scheme in a few keys (a dict or a TOML table); a
:class:`Compressor` (one per sender) turns an update dict into payload bytes through
error feedback -> sparsifier -> quantizer -> codec, and returns the payload with exactly
what the receiver will reconstruct; :func:`decompress` is the receiver's side::

    spec = CompressionSpec.from_dict({"scheme": "topk-uniform-ans", "fraction": 0.01})
    comp = Compressor(spec, manifest)
    payload, reconstruction = comp.compress(update)    # update: name -> float32 array
    assert all((decompress(payload, manifest)[k] == v).all() for k, v in reconstruction.items())

Spec keys (defaults in :class:`CompressionSpec`): ``quantizer`` (none | uniform | stc),
``qp``, ``qp_density``, ``step``, ``bits``, ``dead_zone``; ``sparsify`` (none | topk |
randk | threshold | structured | threshold-structured), ``fraction``, ``scope`` (tensor | global),
``target_sparsity``, ``gain``, ``include_1d``; ``codec`` (ans | deepcabac | raw |
float32); ``error_feedback``; ``seed``; and ``scheme``, a name from :data:`SCHEMES`
whose keys the others override.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np

from fedcomp.codec.base import Codec, codec_names, get_codec
from fedcomp.codec.wire import decode_payload, encode_payload
from fedcomp.errors import ConfigError
from fedcomp.params import ParamManifest
from fedcomp.quant.base import Quantizer
from fedcomp.quant.feedback import ErrorFeedback
from fedcomp.quant.sparsify import Chained, RandomK, Sparsifier, StatisticsThreshold, StructuredFilters, TopK
from fedcomp.quant.stc import STCQuantizer
from fedcomp.quant.tensor import QuantizedTensor, float32_tensor
from fedcomp.quant.uniform import UniformQuantizer

QUANTIZERS = ("none", "uniform", "stc")
SPARSIFIERS = ("none", "topk", "randk", "threshold", "structured", "threshold-structured")
SCOPES = ("tensor", "global")
DEFAULT_QP = -32

#: Named schemes: a preset or a user can name one in a single line ("scheme" key).
SCHEMES: dict[str, dict[str, Any]] = {
    # uncompressed FedAvg in the payload format (lossless float32)
    "dense": {"quantizer": "none", "codec": "float32"},
    # dense NNC-style uniform quantization, entropy coded
    "uniform-ans": {"quantizer": "uniform", "qp": DEFAULT_QP, "codec": "ans"},
    "uniform-deepcabac": {"quantizer": "uniform", "qp": DEFAULT_QP, "codec": "deepcabac"},
    # sparse differential updates: top-1% + uniform qp + error feedback
    "topk-uniform-ans": {"sparsify": "topk", "fraction": 0.01, "quantizer": "uniform", "qp": DEFAULT_QP,
                         "codec": "ans", "error_feedback": True},
    "topk-uniform-deepcabac": {"sparsify": "topk", "fraction": 0.01, "quantizer": "uniform", "qp": DEFAULT_QP,
                               "codec": "deepcabac", "error_feedback": True},
    "topk-uniform-raw": {"sparsify": "topk", "fraction": 0.01, "quantizer": "uniform", "qp": DEFAULT_QP,
                         "codec": "raw", "error_feedback": True},
    # NNCodec-like: statistics threshold to 90% sparsity, uniform qp, DeepCABAC
    "nnc": {"sparsify": "threshold", "target_sparsity": 0.9, "quantizer": "uniform", "qp": DEFAULT_QP,
            "codec": "deepcabac", "error_feedback": True},
    # STC (Sattler et al. 2019): top-1/400 ternarized to +-mean, error feedback
    "stc": {"sparsify": "topk", "fraction": 1 / 400, "quantizer": "stc", "codec": "ans", "error_feedback": True},
    "randk-uniform-ans": {"sparsify": "randk", "fraction": 0.01, "quantizer": "uniform", "qp": DEFAULT_QP,
                          "codec": "ans", "error_feedback": True},
}


@dataclass(frozen=True)
class CompressionSpec:
    """What a sender does to an update; build it with :meth:`from_dict`."""

    quantizer: str = "none"
    qp: int | None = None  # uniform: DEFAULT_QP unless step or bits is given
    qp_density: int = 2
    step: float | None = None
    bits: int | None = None
    dead_zone: float = 0.0
    sparsify: str = "none"
    fraction: float = 0.01
    scope: str = "tensor"
    target_sparsity: float = 0.9
    gain: float = 1.0
    include_1d: bool = False
    # ans: smallest on every set measured (benchmarks/results/codec.md); DeepCABAC is faster
    # on small (38k-parameter) and on dense payloads, ans on large sparse ones
    codec: str = "ans"
    error_feedback: bool = False
    seed: int = 0

    @classmethod
    def keys(cls) -> list[str]:
        """Every key a spec dict may hold."""
        return ["scheme"] + [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> "CompressionSpec":
        """Build and validate a spec from a dict or a TOML table; ConfigError if invalid."""
        table = dict(table)
        unknown = sorted(set(table) - set(cls.keys()))
        if unknown:
            raise ConfigError(f"unknown compression key(s) {unknown}; valid keys: {', '.join(cls.keys())}")
        scheme = table.pop("scheme", None)
        if scheme is not None:
            if scheme not in SCHEMES:
                raise ConfigError(f"unknown scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
            table = {**SCHEMES[scheme], **table}
        spec = cls(**table)
        spec.validate()
        return spec

    @classmethod
    def from_toml(cls, text: str) -> "CompressionSpec":
        """Build a spec from TOML text holding the keys at top level."""
        try:
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"compression spec is not valid TOML: {exc}") from exc

    @classmethod
    def setting_defaults(cls) -> dict[str, Any]:
        """Each key with a concrete default for run settings: a key whose spec default is None
        takes its "unset" value (0, 0.0 or ""), except ``qp``, which takes DEFAULT_QP."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not None:
                out[f.name] = f.default
            elif f.name == "qp":
                out[f.name] = DEFAULT_QP
            else:
                out[f.name] = {"int": 0, "float": 0.0, "str": ""}[str(f.type).split("|")[0].strip()]
        return out

    @classmethod
    def from_settings(cls, flat: Mapping[str, Any]) -> "CompressionSpec":
        """A spec from run settings (the keys of :meth:`setting_defaults`): unset values mean None,
        and ``qp`` gives way when ``step`` or ``bits`` is set."""
        table = {k: v for k, v in flat.items() if k != "scheme"}
        for f in dataclasses.fields(cls):
            if f.default is None and f.name in table and not table[f.name] and f.name != "qp":
                table[f.name] = None
        if table.get("step") or table.get("bits"):
            table["qp"] = None
        return cls.from_dict(table)

    @property
    def lossless_dense(self) -> bool:
        """True when the spec neither quantizes nor sparsifies (plain float32 values)."""
        return self.quantizer == "none" and self.sparsify == "none"

    def to_dict(self) -> dict[str, Any]:
        """The keys that differ from the defaults (a one-line description of the scheme)."""
        default = CompressionSpec()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    def validate(self) -> None:
        """Raise ConfigError naming the bad key and its valid choices."""
        for key, value, choices in (("quantizer", self.quantizer, QUANTIZERS),
                                    ("sparsify", self.sparsify, SPARSIFIERS),
                                    ("scope", self.scope, SCOPES),
                                    ("codec", self.codec, codec_names())):
            if value not in choices:
                raise ConfigError(f"{key} = {value!r} is not one of: {', '.join(choices)}")
        try:
            self.build_quantizer()
            self.build_sparsifier()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid compression spec: {exc}") from exc
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    def build_quantizer(self) -> Quantizer | None:
        """The quantizer this spec names (None: lossless float32)."""
        if self.quantizer == "uniform":
            given = sum(v is not None for v in (self.qp, self.step, self.bits))
            qp = DEFAULT_QP if given == 0 else self.qp
            return UniformQuantizer(qp=qp, qp_density=self.qp_density, step=self.step, bits=self.bits,
                                    dead_zone=self.dead_zone)
        if self.quantizer == "stc":
            return STCQuantizer()
        return None

    def build_sparsifier(self) -> Sparsifier | None:
        """The sparsifier this spec names (None: keep everything)."""
        if self.sparsify == "topk":
            return TopK(self.fraction, self.scope, self.include_1d)
        if self.sparsify == "randk":
            return RandomK(self.fraction, self.include_1d)
        if self.sparsify in ("threshold", "threshold-structured"):
            quantizer = self.build_quantizer()
            fixed_step = isinstance(quantizer, UniformQuantizer) and quantizer.bits is None
            min_step = quantizer.step_for(np.zeros(0)) if fixed_step else 0.0
            threshold = StatisticsThreshold(self.target_sparsity, min_step, self.include_1d)
            if self.sparsify == "threshold":
                return threshold
            return Chained(StructuredFilters(self.gain, self.include_1d), threshold)
        if self.sparsify == "structured":
            return StructuredFilters(self.gain, self.include_1d)
        return None

    def build_codec(self) -> Codec:
        return get_codec(self.codec)


class Compressed(NamedTuple):
    """What a sender produced: the payload bytes and exactly what the receiver will decode."""

    payload: bytes
    reconstruction: dict[str, np.ndarray]


class _Pipeline:
    """Error feedback, sparsifier and quantizer of one spec (a Compressor routes tensors to pipelines)."""

    def __init__(self, spec: CompressionSpec) -> None:
        self.spec = spec
        self.quantizer = spec.build_quantizer()
        self.sparsifier = spec.build_sparsifier()
        self.feedback = ErrorFeedback() if spec.error_feedback else None


class Compressor:
    """One sender's pipeline: error feedback, sparsify, quantize, entropy code.

    ``overrides`` routes named tensors through their own spec (its sparsifier, quantizer and
    error feedback; the payload's codec is always ``spec``'s), e.g. FSFL's filter scales,
    which travel dense and finely quantized beside a sparse weight update.

    Holds the error-feedback residuals (plain float32 arrays, see :meth:`state_dict`) and
    the number of updates compressed so far (it seeds random-k, so a restored sender does
    not repeat its masks).
    """

    def __init__(self, spec: CompressionSpec, manifest: ParamManifest,
                 overrides: Mapping[str, CompressionSpec] | None = None) -> None:
        self.spec, self.manifest = spec, manifest
        self.codec = spec.build_codec()
        self.main = _Pipeline(spec)
        by_spec: dict[CompressionSpec, _Pipeline] = {spec: self.main}
        self.routes: dict[str, _Pipeline] = {}
        for name, override in (overrides or {}).items():
            self.routes[name] = by_spec.setdefault(override, _Pipeline(override))
        self.pipelines = list(by_spec.values())
        self.rounds = 0

    @property
    def quantizer(self) -> Quantizer | None:
        """The main spec's quantizer."""
        return self.main.quantizer

    @quantizer.setter
    def quantizer(self, quantizer: Quantizer | None) -> None:
        self.main.quantizer = quantizer

    def _check(self, update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = set(self.manifest.names)
        out = {}
        for name in sorted(update, key=lambda n: self.manifest.index(n) if n in names else -1):
            if name not in names:
                raise ValueError(f"update tensor {name!r} is not in the parameter manifest")
            values = np.asarray(update[name], dtype=np.float32)
            expected = self.manifest[self.manifest.index(name)].shape
            if values.shape != tuple(expected):
                raise ValueError(f"update tensor {name!r} has shape {values.shape}, manifest says {expected}")
            out[name] = values
        return out

    def _groups(self, update: Mapping[str, np.ndarray]) -> list[tuple[_Pipeline, dict[str, np.ndarray]]]:
        groups: dict[int, dict[str, np.ndarray]] = {}
        for name, values in update.items():
            groups.setdefault(id(self.routes.get(name, self.main)), {})[name] = values
        return [(p, groups[id(p)]) for p in self.pipelines if id(p) in groups]

    def quantize(
        self, update: Mapping[str, np.ndarray], relevance: Mapping[str, np.ndarray] | None = None
    ) -> list[QuantizedTensor]:
        """Sparsify and quantize (no error feedback, no coding): the symbols to send, in manifest order.

        ``relevance`` (per-weight, same shapes) goes to relevance-aware quantizers.
        """
        out: dict[str, QuantizedTensor] = {}
        for pipeline, group in self._groups(update):
            out.update({t.name: t for t in self._quantize_group(pipeline, group, relevance or {})})
        return [out[name] for name in update]

    def _quantize_group(self, pipeline: _Pipeline, update: Mapping[str, np.ndarray],
                        relevance: Mapping[str, np.ndarray]) -> list[QuantizedTensor]:
        if pipeline.sparsifier is not None:
            rng = np.random.default_rng([pipeline.spec.seed, self.rounds])
            update = pipeline.sparsifier.sparsify(update, rng)
        if pipeline.quantizer is None:
            return [float32_tensor(name, v) for name, v in update.items()]
        return [pipeline.quantizer.quantize(v, name, relevance.get(name)) for name, v in update.items()]

    def prepare(
        self, update: Mapping[str, np.ndarray], relevance: Mapping[str, np.ndarray] | None = None
    ) -> list[QuantizedTensor]:
        """Error feedback, sparsify and quantize ``update`` (a subset of the manifest); updates the residuals.

        Returns the quantized tensors in manifest order; :meth:`encode` codes them, alone or
        together with tensors prepared by another call (one payload for a two-stage sender).
        ``relevance``: optional per-weight relevances for relevance-aware quantizers.
        """
        update = self._check(update)
        quantized: dict[str, QuantizedTensor] = {}
        for pipeline, group in self._groups(update):
            corrected = pipeline.feedback.corrected(group) if pipeline.feedback else group
            tensors = self._quantize_group(pipeline, corrected, relevance or {})
            if pipeline.feedback:
                pipeline.feedback.record(corrected, {t.name: t.dequantize() for t in tensors})
            quantized.update({t.name: t for t in tensors})
        self.rounds += 1
        return [quantized[name] for name in update]

    def encode(self, tensors: list[QuantizedTensor], flags: int = 0) -> Compressed:
        """One payload of ``tensors`` with this sender's codec, and what the receiver will decode."""
        payload = encode_payload(tensors, self.manifest, self.codec, flags)
        return Compressed(payload, {t.name: t.dequantize() for t in sorted(tensors, key=self._position)})

    def _position(self, tensor: QuantizedTensor) -> int:
        return self.manifest.index(tensor.name)

    def compress(
        self,
        update: Mapping[str, np.ndarray],
        flags: int = 0,
        relevance: Mapping[str, np.ndarray] | None = None,
    ) -> Compressed:
        """:meth:`prepare` then :meth:`encode`: the payload of ``update`` and its reconstruction.

        ``flags``: wire flags (e.g. :data:`~fedcomp.codec.wire.FLAG_FULL_MODEL`).
        """
        return self.encode(self.prepare(update, relevance), flags)

    @property
    def residual(self) -> dict[str, np.ndarray]:
        """The error-feedback residuals of every tensor that has one."""
        return {k: v for p in self.pipelines if p.feedback for k, v in p.feedback.residual.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays: ``residual/<name>`` per tensor and ``rounds``."""
        state = {f"residual/{k}": v.copy() for k, v in self.residual.items()}
        state["rounds"] = np.array(self.rounds, dtype=np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.rounds = int(np.asarray(state.get("rounds", 0)).reshape(-1)[0])
        residual = self._check({k[len("residual/"):]: v for k, v in state.items() if k.startswith("residual/")})
        for pipeline in self.pipelines:
            if pipeline.feedback is not None:
                pipeline.feedback.load_state_dict({})
        for name, values in residual.items():
            pipeline = self.routes.get(name, self.main)
            if pipeline.feedback is None:
                raise ConfigError(f"state holds a residual for {name!r} but its spec has error_feedback = false")
            pipeline.feedback.residual[name] = np.array(values, dtype=np.float32)


def decompress(payload: bytes, manifest: ParamManifest) -> dict[str, np.ndarray]:
    """Decode a payload into float32 tensors (manifest order); PayloadError if malformed."""
    return {t.name: t.dequantize() for t in decode_payload(payload, manifest).tensors}
