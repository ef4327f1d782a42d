"""Channels: how a set of named tensors travels in one direction inside a Flower message.

Both sides hold one channel per direction. The dense channel carries float32 tensors as a
plain Flower ``ArrayRecord`` (what stock Flower strategies send, so stock clients
interoperate). The payload channel carries coded payloads (`fedcomp.compress.codec.wire`), each as
one raw-bytes ``Array`` of the record, with no ``.npy`` header.

A channel's ``encode`` takes the sender's state (plain arrays: its error-feedback residual)
and returns an :class:`Encoded` (the record, its payload and float32 sizes, and exactly
what the receiver will decode) with the sender's new state.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Mapping, NamedTuple, Protocol, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from fedcomp.compress.compression import CompressionSpec, Compressor, decompress
from fedcomp.errors import PayloadError
from fedcomp.compress.params import ParamManifest
from fedcomp.compress.quant.arrays import Array as AnyArray  # flwr.app.Array is the record entry
from fedcomp.compress.quant.tensor import QuantizedTensor

State = dict[str, AnyArray]  # numpy on the host; a payload channel fed device tensors keeps its residual there
PAYLOAD_STYPE = "fedcomp/payload"
#: Most payloads one record may carry (a catch-up replay is bounded by ``sync.history``).
MAX_PAYLOADS = 1024


class Encoded(NamedTuple):
    """One direction's content of one message, with its sizes."""

    record: ArrayRecord
    payload_bytes: int  # bytes of model content (coded payloads, or raw tensor blobs)
    dense_bytes: int  # float32 bytes of the same tensors, uncompressed
    reconstruction: dict[str, np.ndarray]  # what the receiver decodes, bit for bit


class Channel(Protocol):
    """Encodes tensors into an ``ArrayRecord`` (with its sizes, see `Encoded`) and decodes them back."""

    def encode(self, tensors: Mapping[str, np.ndarray], state: State | None = None) -> tuple[Encoded, State]: ...

    def decode(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]: ...


def record_bytes(record: object) -> int:
    """Bytes of model content in a record (coded payloads, or ``.npy`` blobs with their short
    headers), whatever a sender put there: 0 for anything that is not an ArrayRecord of bytes."""
    if not isinstance(record, ArrayRecord):
        return 0
    return sum(len(a.data) for a in record.values() if isinstance(getattr(a, "data", None), bytes))


def float32_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    return 4 * sum(int(np.size(v)) for v in tensors.values())


def dense_record(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Float32 tensors as an ``ArrayRecord`` keyed by name (also the server's model holder)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()})


def record_tensors(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The tensors of a trusted, locally made ``ArrayRecord`` (no checks)."""
    return {k: record[k].numpy() for k in record.keys()}


class DenseChannel:
    """Uncompressed float32 tensors, one Flower ``Array`` per tensor, keyed by name."""

    def encode(self, tensors: Mapping[str, np.ndarray], state: State | None = None) -> tuple[Encoded, State]:
        record = dense_record(tensors)
        reconstruction = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        return Encoded(record, record_bytes(record), float32_bytes(tensors), reconstruction), state or {}

    def decode(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]:
        """The record's tensors, checked against the manifest before use."""
        if not isinstance(record, ArrayRecord):
            raise PayloadError(f"expected an ArrayRecord of float32 tensors, got {type(record).__name__}")
        expected = {t.name: t.shape for t in manifest.tensors}
        if set(record.keys()) != set(expected):
            missing = sorted(set(expected) - set(record.keys()))
            extra = sorted(set(record.keys()) - set(expected))
            raise PayloadError(f"dense record does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        out: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            array = record[name]
            if tuple(array.shape) != shape or array.dtype != "float32" or not isinstance(array.data, bytes):
                raise PayloadError(f"tensor '{name}' is {array.dtype}{tuple(array.shape)}, expected float32{shape}")
            out[name] = _npy_float32(array.data, shape, name)
        return out


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npy_float32(data: bytes, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The float32 tensor of a ``.npy`` blob, its header checked against ``shape`` before anything
    is allocated (``np.load`` would allocate whatever size the header declares)."""
    stream = io.BytesIO(data)
    try:
        header = _NPY_HEADERS.get(np.lib.format.read_magic(stream))
        if header is None:
            raise ValueError("unsupported .npy version")
        declared, fortran, dtype = header(stream)
    except Exception as err:  # noqa: BLE001 - numpy's header parser raises assorted types on junk (tokenize.TokenError)
        raise PayloadError(f"tensor '{name}' has no valid .npy header ({type(err).__name__})") from None
    size = 4 * int(np.prod(shape, dtype=np.int64))
    if tuple(declared) != shape or fortran or dtype != np.dtype("<f4") or len(data) - stream.tell() != size:
        raise PayloadError(f"tensor '{name}' holds {dtype}{tuple(declared)} in {len(data) - stream.tell()} bytes, "
                           f"expected float32{shape}")
    return np.frombuffer(data, dtype="<f4", count=size // 4, offset=stream.tell()).reshape(shape).copy()


def payload_record(payloads: Sequence[bytes]) -> ArrayRecord:
    """Coded payloads as raw-bytes ``Array``s named ``p0``, ``p1``, ... in order."""
    return ArrayRecord({f"p{i}": Array(dtype="uint8", shape=(len(p),), stype=PAYLOAD_STYPE, data=bytes(p))
                        for i, p in enumerate(payloads)})


def record_payloads(record: ArrayRecord, max_bytes: int) -> list[bytes]:
    """The payloads of a record made by :func:`payload_record`, checked before use."""
    if not isinstance(record, ArrayRecord):
        raise PayloadError(f"expected an ArrayRecord of payloads, got {type(record).__name__}")
    keys = list(record.keys())
    if not 0 < len(keys) <= MAX_PAYLOADS or keys != [f"p{i}" for i in range(len(keys))]:
        raise PayloadError(f"a payload record holds p0..pN (at most {MAX_PAYLOADS}); got {keys[:5]}")
    out = []
    for key in keys:
        array = record[key]
        if array.stype != PAYLOAD_STYPE or array.dtype != "uint8" or not isinstance(array.data, bytes) \
                or tuple(array.shape) != (len(array.data),):
            raise PayloadError(f"record entry {key!r} is not a fedcomp payload ({array.stype}, {array.dtype}"
                               f"{tuple(array.shape)[:3]})")
        if len(array.data) > max_bytes:
            raise PayloadError(f"payload {key!r} has {len(array.data)} bytes, more than the model allows "
                               f"({max_bytes})")
        out.append(array.data)
    return out


def max_payload_bytes(manifest: ParamManifest) -> int:
    """The largest payload a manifest can need: float32 symbols of every tensor, plus generous headers."""
    return 4 * manifest.num_values + 64 * len(manifest) + 1024


class PayloadChannel:
    """Sparse differential updates: error feedback, sparsify, quantize and entropy code, one payload.

    ``overrides`` routes named tensors through their own spec (FSFL scales travel dense and
    finely quantized beside a sparse weight update). ``seed`` seeds random sparsifiers
    (give each sender its own).
    """

    def __init__(self, spec: CompressionSpec, manifest: ParamManifest,
                 overrides: Mapping[str, CompressionSpec] | None = None, seed: int = 0) -> None:
        self.spec = dataclasses.replace(spec, seed=seed)
        self.manifest = manifest
        self.overrides = dict(overrides or {})

    def _compressor(self, state: State | None) -> Compressor:
        compressor = Compressor(self.spec, self.manifest, self.overrides)
        if state:
            compressor.load_state_dict(state)
        return compressor

    def prepare(self, tensors: Mapping[str, AnyArray], state: State | None = None,
                relevance: Mapping[str, np.ndarray] | None = None) -> tuple[list[QuantizedTensor], State]:
        """Quantized tensors (error feedback applied) and the sender's new state; see :meth:`pack`.

        ``tensors`` may be device tensors: the work runs there, and only the symbols come to the host.

        ``relevance``: per-weight relevances for ECQx (:func:`fedcomp.local.relevance.weight_relevance`).
        """
        compressor = self._compressor(state)
        quantized = compressor.prepare(tensors, relevance)
        return quantized, compressor.state_dict()

    def pack(self, quantized: Sequence[QuantizedTensor], flags: int = 0) -> Encoded:
        """One payload of tensors prepared by one or more :meth:`prepare` calls."""
        compressed = Compressor(self.spec, self.manifest).encode(list(quantized), flags)
        record = payload_record([compressed.payload])
        return Encoded(record, len(compressed.payload), float32_bytes(compressed.reconstruction),
                       compressed.reconstruction)

    def encode(self, tensors: Mapping[str, np.ndarray], state: State | None = None) -> tuple[Encoded, State]:
        quantized, state = self.prepare(tensors, state)
        return self.pack(quantized), state

    def decode(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]:
        """The tensors of a record carrying exactly one payload."""
        payloads = self.decode_all(record, manifest)
        if len(payloads) != 1:
            raise PayloadError(f"expected one payload, got {len(payloads)}")
        return payloads[0]

    def decode_all(self, record: ArrayRecord, manifest: ParamManifest) -> list[dict[str, np.ndarray]]:
        """The tensors of every payload of a record, in order (a catch-up replay)."""
        return [decompress(p, manifest) for p in record_payloads(record, max_payload_bytes(manifest))]
