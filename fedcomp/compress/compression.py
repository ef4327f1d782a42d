"""Compressed updates end to end: a small spec, a per-sender pipeline, and the decoder.

A :class:`CompressionSpec` names a scheme in a few keys (a dict or a TOML table); a
:class:`Compressor` (one per sender) turns an update dict into payload bytes through
error feedback -> sparsifier -> quantizer -> codec, and returns the payload with exactly
what the receiver will reconstruct; :func:`decompress` is the receiver's side::

    spec = CompressionSpec.from_dict({"scheme": "topk-uniform-ans", "fraction": 0.01})
    comp = Compressor(spec, manifest)
    payload, reconstruction = comp.compress(update)    # update: name -> float32 array or tensor
    assert all((decompress(payload, manifest)[k] == v).all() for k, v in reconstruction.items())

An update may be numpy arrays or torch tensors on any device (the GPU that trained the
model): error feedback, sparsification and quantization run where the update lives, the
residual stays there, and only the int32 symbols move to the host for the entropy coder
(one torch implementation serves both forms, :mod:`fedcomp.compress.quant.arrays`; the payload is
the same bytes either way). ECQ, ECQx and EC2T are numpy: their values go to the host.

Spec keys (defaults in :class:`CompressionSpec`): ``quantizer`` (none | uniform | stc |
ecq | ecqx | ec2t), ``qp``, ``qp_density``, ``step``, ``bits``, ``dead_zone``, ``gamma``,
``p``, ``relevance_batch``; ``sparsify`` (none | topk | randk | threshold | structured |
threshold-structured), ``fraction``, ``scope`` (tensor | global),
``target_sparsity``, ``gain``, ``include_1d``; ``codec`` (ans | deepcabac | raw |
float32); ``error_feedback``; ``seed``; and ``scheme``, a name from :data:`SCHEMES`
whose keys the others override. Quantizers and sparsifiers are looked up by name in
:data:`QUANTIZER_BUILDERS` and :data:`SPARSIFIER_BUILDERS` (add one with
:func:`register_quantizer` / :func:`register_sparsifier`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import torch

from fedcomp.compress.codec.base import Codec, codec_names, get_codec
from fedcomp.compress.codec.wire import decode_payload, encode_payload
from fedcomp.errors import ConfigError
from fedcomp.compress.params import ParamManifest
from fedcomp.compress.quant.arrays import Array, as_tensor
from fedcomp.compress.quant.base import Quantizer
from fedcomp.compress.quant.ecq import EC2TQuantizer, ECQQuantizer, ECQxQuantizer
from fedcomp.compress.quant.feedback import ErrorFeedback
from fedcomp.compress.quant.sparsify import Chained, RandomK, Sparsifier, StatisticsThreshold, StructuredFilters, TopK
from fedcomp.compress.quant.stc import STCQuantizer
from fedcomp.compress.quant.tensor import QuantizedTensor, float32_tensor
from fedcomp.compress.quant.uniform import UniformQuantizer
from fedcomp.settings import Setting, declared, setting

SCOPES = ("tensor", "global")
DEFAULT_QP = -32
RESIDUAL_PREFIX = "residual/"  # a Compressor's state: residual/<tensor name> per residual ...
ROUNDS_KEY = "rounds"  # ... and the number of updates compressed so far

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
    # entropy-constrained quantization of the whole update (DESIGN 4.7), error feedback, ans
    "ecq-ans": {"quantizer": "ecq", "bits": 4, "gamma": 0.1, "codec": "ans", "error_feedback": True},
    "ecqx-ans": {"quantizer": "ecqx", "bits": 4, "gamma": 0.1, "p": 0.1, "codec": "ans", "error_feedback": True},
    "ec2t-ans": {"quantizer": "ec2t", "gamma": 0.1, "codec": "ans", "error_feedback": True},
}


@dataclass(frozen=True)
class CompressionSpec:
    """What a sender does to an update; build it with :meth:`from_dict`.

    Every field but ``seed`` is also a run setting of each direction (``up.<field>``,
    ``down.<field>``; see :func:`direction_settings`), declared here once.
    """

    quantizer: str = setting("quantizer", "none", "quantizer: none, uniform, stc, ecq, ecqx, ec2t or a registered one")
    qp: int | None = setting("qp", DEFAULT_QP, "uniform: NNC quantization parameter (step 2**(qp / qp_density)); "
                             "ignored when step or bits is set", optional=True)
    qp_density: int = setting("qp_density", 2, "uniform: qp steps per doubling of the step size")
    step: float | None = setting("step", 0.0, "uniform: quantization step (0: from qp)", optional=True)
    bits: int | None = setting("bits", 0, "uniform: bit width with a per-tensor step (0: from qp); ecq and ecqx: "
                               "grid bits (0: 4)", optional=True)
    dead_zone: float = setting("dead_zone", 0.0, "uniform: extra dead zone around 0, in steps")
    sparsify: str = setting("sparsify", "none", "sparsifier: none, topk, randk, threshold, structured, "
                            "threshold-structured or a registered one")
    fraction: float = setting("fraction", 0.01, "topk and randk: share of the entries kept")
    scope: str = setting("scope", "tensor", "topk: per tensor or over the whole update (tensor or global)")
    target_sparsity: float = setting("target_sparsity", 0.9, "threshold: share of the entries set to 0")
    gain: float = setting("gain", 1.0, "structured: filters whose norm is below gain x the mean are dropped")
    include_1d: bool = setting("include_1d", False, "sparsify biases and other 1-d tensors too")
    # ecq / ecqx / ec2t (bits: ecq and ecqx, default 4): entropy-constraint strength, ECQx's
    # sparsity tolerance, and how many local examples a client feeds LRP for ECQx relevances
    gamma: float = setting("gamma", 0.1, "ecq, ecqx and ec2t: entropy-constraint strength")
    p: float = setting("p", 0.1, "ecqx: sparsity tolerance below ECQ")
    relevance_batch: int = setting("relevance_batch", 64, "ecqx: local examples whose LRP relevances are summed")
    # ans: smallest on every set measured (benchmarks/results/codec.md); DeepCABAC is faster
    # on small (38k-parameter) and on dense payloads, ans on large sparse ones
    codec: str = setting("codec", "ans", "entropy codec: ans, deepcabac, raw or float32")
    error_feedback: bool = setting("error_feedback", False, "keep what was not sent and add it to the next update")
    seed: int = 0  # senders seed from the run's seed and their own id

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
    def from_settings(cls, flat: Mapping[str, Any]) -> "CompressionSpec":
        """A spec from one direction's run settings (keys without the direction): 0 for ``step`` and
        ``bits`` means not given, and ``qp`` gives way when ``step`` or ``bits`` is set."""
        table = {k: v for k, v in flat.items() if k != "scheme"}
        for key in ("step", "bits"):
            if key in table and not table[key]:
                table[key] = None
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
        for key, value, choices in (("quantizer", self.quantizer, tuple(QUANTIZER_BUILDERS)),
                                    ("sparsify", self.sparsify, tuple(SPARSIFIER_BUILDERS)),
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
        if not isinstance(self.relevance_batch, int) or self.relevance_batch <= 0:
            raise ConfigError(f"relevance_batch must be a positive integer, got {self.relevance_batch!r}")

    def build_quantizer(self, max_size: int | None = None) -> Quantizer | None:
        """The quantizer this spec names (None: lossless float32).

        ``max_size``: the model's largest tensor, for quantizers that scale per layer (ECQ's decay).
        """
        return QUANTIZER_BUILDERS[self.quantizer](self, max_size)

    def build_sparsifier(self) -> Sparsifier | None:
        """The sparsifier this spec names (None: keep everything)."""
        return SPARSIFIER_BUILDERS[self.sparsify](self)

    def build_codec(self) -> Codec:
        return get_codec(self.codec)


QuantizerBuilder = Callable[[CompressionSpec, "int | None"], "Quantizer | None"]
SparsifierBuilder = Callable[[CompressionSpec], "Sparsifier | None"]
#: Quantizers by spec name: ``builder(spec, max_size) -> Quantizer | None`` (None: lossless float32).
QUANTIZER_BUILDERS: dict[str, QuantizerBuilder] = {}
#: Sparsifiers by spec name: ``builder(spec) -> Sparsifier | None`` (None: keep everything).
SPARSIFIER_BUILDERS: dict[str, SparsifierBuilder] = {}


def register_quantizer(name: str) -> Callable[[QuantizerBuilder], QuantizerBuilder]:
    """Decorator: make ``quantizer = name`` build a quantizer with the decorated function."""
    def register(builder: QuantizerBuilder) -> QuantizerBuilder:
        QUANTIZER_BUILDERS[name] = builder
        return builder
    return register


def register_sparsifier(name: str) -> Callable[[SparsifierBuilder], SparsifierBuilder]:
    """Decorator: make ``sparsify = name`` build a sparsifier with the decorated function."""
    def register(builder: SparsifierBuilder) -> SparsifierBuilder:
        SPARSIFIER_BUILDERS[name] = builder
        return builder
    return register


@register_quantizer("none")
def _no_quantizer(spec: CompressionSpec, max_size: int | None) -> None:
    return None


@register_quantizer("uniform")
def _uniform(spec: CompressionSpec, max_size: int | None) -> UniformQuantizer:
    given = sum(v is not None for v in (spec.qp, spec.step, spec.bits))
    qp = DEFAULT_QP if given == 0 else spec.qp
    return UniformQuantizer(qp=qp, qp_density=spec.qp_density, step=spec.step, bits=spec.bits,
                            dead_zone=spec.dead_zone)


@register_quantizer("stc")
def _stc(spec: CompressionSpec, max_size: int | None) -> STCQuantizer:
    return STCQuantizer()


# ECQ symbols are grid indices with value = symbol * step, so updates travel as UNIFORM_STEP
# (4 bytes per tensor) rather than as a codebook of up to 2**bits floats
@register_quantizer("ecq")
def _ecq(spec: CompressionSpec, max_size: int | None) -> ECQQuantizer:
    return ECQQuantizer(bits=spec.bits or 4, gamma=spec.gamma, max_size=max_size, codebook=False)


@register_quantizer("ecqx")
def _ecqx(spec: CompressionSpec, max_size: int | None) -> ECQxQuantizer:
    return ECQxQuantizer(bits=spec.bits or 4, gamma=spec.gamma, p=spec.p, max_size=max_size, codebook=False)


@register_quantizer("ec2t")
def _ec2t(spec: CompressionSpec, max_size: int | None) -> EC2TQuantizer:
    return EC2TQuantizer(gamma=spec.gamma, max_size=max_size)


@register_sparsifier("none")
def _no_sparsifier(spec: CompressionSpec) -> None:
    return None


@register_sparsifier("topk")
def _topk(spec: CompressionSpec) -> TopK:
    return TopK(spec.fraction, spec.scope, spec.include_1d)


@register_sparsifier("randk")
def _randk(spec: CompressionSpec) -> RandomK:
    return RandomK(spec.fraction, spec.include_1d)


@register_sparsifier("threshold")
def _threshold(spec: CompressionSpec) -> StatisticsThreshold:
    quantizer = spec.build_quantizer()
    fixed_step = isinstance(quantizer, UniformQuantizer) and quantizer.bits is None
    min_step = quantizer.step_for(np.zeros(0)) if fixed_step else 0.0
    return StatisticsThreshold(spec.target_sparsity, min_step, spec.include_1d)


@register_sparsifier("threshold-structured")
def _threshold_structured(spec: CompressionSpec) -> Chained:
    """NNCodec's recipe: structured filters, then the statistics threshold."""
    return Chained(StructuredFilters(spec.gain, spec.include_1d), _threshold(spec))


@register_sparsifier("structured")
def _structured(spec: CompressionSpec) -> StructuredFilters:
    return StructuredFilters(spec.gain, spec.include_1d)


#: The built-in names (the registries above also hold any registered later).
QUANTIZERS = tuple(QUANTIZER_BUILDERS)
SPARSIFIERS = tuple(SPARSIFIER_BUILDERS)

#: The two directions a run compresses: client updates (up) and the server's (down).
DIRECTIONS = ("up", "down")


def direction_settings(direction: str) -> dict[str, Setting]:
    """The run settings of one direction: ``<direction>.scheme`` and ``<direction>.<key>`` for every spec key."""
    scheme = Setting("", f"{direction}stream compression scheme; sets every {direction}.* key of its layer",
                     choices=lambda: ["", *SCHEMES])
    return {f"{direction}.scheme": scheme} | {
        key: dataclasses.replace(declaration, help=f"{direction}stream compression, {declaration.help}")
        for key, declaration in declared(CompressionSpec, f"{direction}.").items()}


def scheme_settings(direction: str, scheme: str) -> dict[str, Any]:
    """Every ``<direction>.*`` setting as scheme ``scheme`` sets it (the others at their defaults)."""
    if scheme and scheme not in SCHEMES:
        raise ConfigError(f"setting '{direction}.scheme' must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    prefix = f"{direction}."
    table = {key: s.default for key, s in declared(CompressionSpec, prefix).items()}
    table.update({prefix + key: value for key, value in (SCHEMES[scheme] if scheme else {}).items()})
    return table | {f"{direction}.scheme": scheme}


def direction_spec(config: Mapping[str, Any], direction: str) -> CompressionSpec:
    """The `CompressionSpec` of one direction (``up`` or ``down``) of a run's resolved settings."""
    prefix = f"{direction}."
    flat = {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}
    try:
        return CompressionSpec.from_settings(flat)
    except ConfigError as err:
        raise ConfigError(f"{direction}stream compression: {err}") from None


class Compressed(NamedTuple):
    """What a sender produced: the payload bytes and exactly what the receiver will decode."""

    payload: bytes
    reconstruction: dict[str, np.ndarray]


class _Pipeline:
    """Error feedback, sparsifier and quantizer of one spec (a Compressor routes tensors to pipelines)."""

    def __init__(self, spec: CompressionSpec, max_size: int | None = None) -> None:
        self.spec = spec
        self.quantizer = spec.build_quantizer(max_size)
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
        max_size = max((t.size for t in manifest.tensors), default=0) or None
        self.main = _Pipeline(spec, max_size)
        by_spec: dict[CompressionSpec, _Pipeline] = {spec: self.main}
        self.routes: dict[str, _Pipeline] = {}
        for name, override in (overrides or {}).items():
            self.routes[name] = by_spec.setdefault(override, _Pipeline(override, max_size))
        self.pipelines = list(by_spec.values())
        self.rounds = 0

    @property
    def quantizer(self) -> Quantizer | None:
        """The main spec's quantizer."""
        return self.main.quantizer

    @quantizer.setter
    def quantizer(self, quantizer: Quantizer | None) -> None:
        self.main.quantizer = quantizer

    def _check(self, update: Mapping[str, Array]) -> dict[str, torch.Tensor]:
        unknown = [name for name in update if name not in self.manifest]
        if unknown:
            raise ValueError(f"update tensor {unknown[0]!r} is not in the parameter manifest")
        out = {}
        for name in sorted(update, key=self.manifest.index):
            values = as_tensor(update[name])
            expected = self.manifest[self.manifest.index(name)].shape
            if tuple(values.shape) != tuple(expected):
                raise ValueError(f"update tensor {name!r} has shape {tuple(values.shape)}, manifest says {expected}")
            out[name] = values
        return out

    def _groups(self, update: Mapping[str, torch.Tensor]) -> list[tuple[_Pipeline, dict[str, torch.Tensor]]]:
        groups: dict[int, dict[str, torch.Tensor]] = {}
        for name, values in update.items():
            groups.setdefault(id(self.routes.get(name, self.main)), {})[name] = values
        return [(p, groups[id(p)]) for p in self.pipelines if id(p) in groups]

    def quantize(
        self, update: Mapping[str, Array], relevance: Mapping[str, np.ndarray] | None = None
    ) -> list[QuantizedTensor]:
        """Sparsify and quantize (no error feedback, no coding): the symbols to send (on the host), in manifest order.

        ``relevance`` (per-weight, same shapes) goes to relevance-aware quantizers.
        """
        out: dict[str, QuantizedTensor] = {}
        for pipeline, group in self._groups(self._check(update)):
            out.update({t.name: t.host() for t in self._quantize_group(pipeline, group, relevance or {})})
        return [out[name] for name in update]

    def _quantize_group(self, pipeline: _Pipeline, update: Mapping[str, torch.Tensor],
                        relevance: Mapping[str, np.ndarray]) -> list[QuantizedTensor]:
        if pipeline.sparsifier is not None:
            rng = np.random.default_rng([pipeline.spec.seed, self.rounds])
            update = pipeline.sparsifier.sparsify(update, rng)
        if pipeline.quantizer is None:
            return [float32_tensor(name, v) for name, v in update.items()]
        return [pipeline.quantizer.quantize(v, name, relevance.get(name)) for name, v in update.items()]

    def prepare(
        self, update: Mapping[str, Array], relevance: Mapping[str, np.ndarray] | None = None
    ) -> list[QuantizedTensor]:
        """Error feedback, sparsify and quantize ``update`` (a subset of the manifest); updates the residuals.

        Runs where the update's tensors are; returns the quantized tensors (symbols on the
        host) in manifest order; :meth:`encode` codes them, alone or together with tensors
        prepared by another call (one payload for a two-stage sender).
        ``relevance``: optional per-weight relevances for relevance-aware quantizers.
        """
        update = self._check(update)
        quantized: dict[str, QuantizedTensor] = {}
        for pipeline, group in self._groups(update):
            corrected = pipeline.feedback.corrected(group) if pipeline.feedback else group
            tensors = self._quantize_group(pipeline, corrected, relevance or {})
            if pipeline.feedback:
                pipeline.feedback.record(corrected, {t.name: t.dequantize() for t in tensors})
            quantized.update({t.name: t.host() for t in tensors})
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

        ``flags``: wire flags (e.g. :data:`~fedcomp.compress.codec.wire.FLAG_FULL_MODEL`).
        """
        return self.encode(self.prepare(update, relevance), flags)

    @property
    def residual(self) -> dict[str, Array]:
        """The error-feedback residuals of every tensor that has one: numpy copies on the host,
        tensors on an accelerator stay there."""
        return {k: v for p in self.pipelines if p.feedback for k, v in p.feedback.state_dict().items()}

    def state_dict(self) -> dict[str, Array]:
        """``residual/<name>`` per tensor (numpy copies on the host; tensors on an accelerator stay
        there) and ``rounds`` (numpy)."""
        state = {RESIDUAL_PREFIX + k: v for k, v in self.residual.items()}
        state[ROUNDS_KEY] = np.array(self.rounds, dtype=np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, Array]) -> None:
        """Restore what :meth:`state_dict` saved (residuals as numpy arrays or tensors)."""
        self.rounds = int(np.asarray(state.get(ROUNDS_KEY, 0)).reshape(-1)[0])
        residual = self._check({k[len(RESIDUAL_PREFIX):]: v for k, v in state.items()
                                if k.startswith(RESIDUAL_PREFIX)})
        for pipeline in self.pipelines:
            if pipeline.feedback is not None:
                pipeline.feedback.load_state_dict({})
        for name, values in residual.items():
            pipeline = self.routes.get(name, self.main)
            if pipeline.feedback is None:
                raise ConfigError(f"state holds a residual for {name!r} but its spec has error_feedback = false")
            pipeline.feedback.residual[name] = values


def decompress(payload: bytes, manifest: ParamManifest) -> dict[str, np.ndarray]:
    """Decode a payload into float32 tensors (manifest order); PayloadError if malformed."""
    return {t.name: t.dequantize() for t in decode_payload(payload, manifest).tensors}
