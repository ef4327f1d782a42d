"""Channels: how a set of named tensors travels in one direction inside a Flower message.

Both sides hold one channel per direction and call only the methods of :class:`Channel`:
neither reads the layout of a record the other made. The dense channel carries float32
tensors as a plain Flower ``ArrayRecord`` (what stock Flower strategies send, so stock
clients interoperate). The payload channel carries coded payloads (`fedcomp.compress.codec.wire`),
each as one raw-bytes ``Array`` of the record, with no ``.npy`` header.

A payload channel sends each message through one :class:`Sender`, which owns the message's
`Compressor` and the sender's residual: error feedback, sparsification and quantization, an
optional second stage, and the coding. Like ``compress()`` in CompressAI, sending returns
the bytes (in an :class:`Encoded`, with their sizes) together with exactly what the receiver
will rebuild, and the sender's new state (plain arrays: its error-feedback residual).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Callable, Mapping, NamedTuple, Protocol, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from fedcomp.compress.codec.wire import FLAG_FULL_MODEL, decode_payload
from fedcomp.compress.compression import ROUNDS_KEY, RESIDUAL_PREFIX, CompressionSpec, Compressor, decompress
from fedcomp.errors import PayloadError
from fedcomp.compress.params import ParamManifest
from fedcomp.compress.quant.arrays import Array as AnyArray  # flwr.app.Array is the record entry

State = dict[str, AnyArray]  # numpy on the host; a payload channel fed device tensors keeps its residual there
PAYLOAD_STYPE = "fedcomp/payload"
#: Most payloads one record may carry (a catch-up replay is bounded by ``sync.history``).
MAX_PAYLOADS = 1024
#: The whole model travels as one lossless float32 payload, flagged as a full model.
FULL_MODEL_SPEC = CompressionSpec.from_dict({"scheme": "dense"})

#: A second stage of a sender: given what the receiver will rebuild of the tensors sent so far,
#: further tensors to send in the same message (FSFL's compensation, `fedcomp.local.scaling`).
SecondStage = Callable[[Mapping[str, np.ndarray]], Mapping[str, AnyArray]]


class Encoded(NamedTuple):
    """One direction's content of one message, with its sizes."""

    record: ArrayRecord
    payload_bytes: int  # bytes of model content (coded payloads, or raw tensor blobs)
    dense_bytes: int  # float32 bytes of the same tensors, uncompressed
    reconstruction: dict[str, np.ndarray]  # what the receiver decodes, bit for bit
    payload: bytes = b""  # the one coded payload of the message (empty: a dense record)


class Channel(Protocol):
    """One direction of a run: what the sender calls to make a message, what the receiver calls to read it.

    A message carries either updates (tensors the receiver adds to the version it holds) or,
    after `encode_model`, the whole model. A receiver that missed rounds gets a catch-up
    message instead (`fedcomp.exchange.catchup`).
    """

    def encode(self, tensors: Mapping[str, AnyArray], state: State | None = None, *,
               relevance: Mapping[str, np.ndarray] | None = None,
               second_stage: SecondStage | None = None) -> tuple[Encoded, State]:
        """One message carrying ``tensors``.

        Parameters
        ----------
        tensors : mapping
            Name to values (numpy arrays, or torch tensors on any device), a subset of the manifest.
        state : dict, optional
            The sender's state as the previous message left it (its residual); None: a fresh sender.
        relevance : mapping, optional
            Per-weight relevances for relevance-aware quantizers (ECQx).
        second_stage : callable, optional
            Called once with what the receiver will rebuild of ``tensors``; returns further
            tensors that travel in the same message.

        Returns
        -------
        tuple
            The `Encoded` message, and the sender's new state.
        """
        ...

    def encode_model(self, tensors: Mapping[str, np.ndarray]) -> Encoded:
        """The whole model as one message, losslessly (what `decode_model` reads)."""
        ...

    def decode(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]:
        """The tensors of a record carrying one message; PayloadError if it does not fit ``manifest``."""
        ...

    def decode_model(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]:
        """The tensors of a record made by `encode_model`; PayloadError if it is anything else."""
        ...



def sender_state(saved: Mapping[str, AnyArray]) -> State:
    """A sender's entries of a saved state: ``residual/<name>`` and ``rounds``.

    Also reads the layout saved before the sender object existed, which prefixed both with a
    second ``residual/`` (``residual/residual/<name>``, ``residual/rounds``).
    """
    if ROUNDS_KEY not in saved and RESIDUAL_PREFIX + ROUNDS_KEY in saved:
        saved = {k[len(RESIDUAL_PREFIX):]: v for k, v in saved.items() if k.startswith(RESIDUAL_PREFIX)}
    return {k: v for k, v in saved.items() if k.startswith(RESIDUAL_PREFIX) or k == ROUNDS_KEY}


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
    """Uncompressed float32 tensors, one Flower ``Array`` per tensor, keyed by name.

    A dense record is always one whole message: it needs no state and carries no payloads to replay.
    """

    def encode(self, tensors: Mapping[str, AnyArray], state: State | None = None, *,
               relevance: Mapping[str, np.ndarray] | None = None,
               second_stage: SecondStage | None = None) -> tuple[Encoded, State]:
        """`Channel.encode`; lossless, so ``relevance`` does not matter and ``second_stage`` sees ``tensors``."""
        first = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        more = second_stage(first) if second_stage is not None else {}
        sent = {**first, **{k: np.asarray(v, dtype=np.float32) for k, v in more.items()}}
        record = dense_record(sent)
        return Encoded(record, record_bytes(record), float32_bytes(sent), sent), dict(state or {})

    def encode_model(self, tensors: Mapping[str, np.ndarray]) -> Encoded:
        return self.encode(tensors)[0]

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

    def decode_model(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]:
        return self.decode(record, manifest)


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
    """The payloads of a record made by :func:`payload_record` (none, for an empty record), checked before use."""
    if not isinstance(record, ArrayRecord):
        raise PayloadError(f"expected an ArrayRecord of payloads, got {type(record).__name__}")
    keys = list(record.keys())
    if not len(keys) <= MAX_PAYLOADS or keys != [f"p{i}" for i in range(len(keys))]:
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


class Sender:
    """One message's sender: its `Compressor` and the residual, for the life of that message.

    :meth:`send` runs error feedback, sparsification and quantization of the tensors, then the
    optional second stage's tensors through the same pipeline, and codes both in one payload.

    Parameters
    ----------
    compressor : Compressor
        A fresh pipeline of the channel's specs (built once per message).
    state : dict, optional
        The sender's state as the previous message left it (`Compressor.state_dict`).
    """

    def __init__(self, compressor: Compressor, state: State | None = None) -> None:
        self.compressor = compressor
        if state:
            compressor.load_state_dict(state)

    def send(self, tensors: Mapping[str, AnyArray], *, relevance: Mapping[str, np.ndarray] | None = None,
             second_stage: SecondStage | None = None, flags: int = 0) -> tuple[Encoded, State]:
        """The message of ``tensors`` (see `Channel.encode`) and the sender's new state.

        ``flags``: wire flags of the payload (:data:`~fedcomp.compress.codec.wire.FLAG_FULL_MODEL`).
        """
        quantized = self.compressor.prepare(tensors, relevance)
        if second_stage is not None:
            more = second_stage({t.name: t.dequantize() for t in quantized})
            if more:
                quantized += self.compressor.prepare(more)
        compressed = self.compressor.encode(quantized, flags)
        encoded = Encoded(payload_record([compressed.payload]), len(compressed.payload),
                          float32_bytes(compressed.reconstruction), compressed.reconstruction, compressed.payload)
        return encoded, self.compressor.state_dict()


class PayloadChannel:
    """Sparse differential updates: error feedback, sparsify, quantize and entropy code, one payload.

    Parameters
    ----------
    spec : CompressionSpec
        What the sender does to the tensors.
    manifest : ParamManifest
        The exchanged tensors.
    overrides : mapping, optional
        Named tensors routed through their own spec (FSFL scales travel dense and finely
        quantized beside a sparse weight update).
    seed : int
        Seeds random sparsifiers (give each sender its own).
    """

    def __init__(self, spec: CompressionSpec, manifest: ParamManifest,
                 overrides: Mapping[str, CompressionSpec] | None = None, seed: int = 0) -> None:
        self.spec = dataclasses.replace(spec, seed=seed)
        self.manifest = manifest
        self.overrides = dict(overrides or {})

    def sender(self, state: State | None = None) -> Sender:
        """The sender of one message, continuing from ``state``."""
        return Sender(Compressor(self.spec, self.manifest, self.overrides), state)

    def encode(self, tensors: Mapping[str, AnyArray], state: State | None = None, *,
               relevance: Mapping[str, np.ndarray] | None = None,
               second_stage: SecondStage | None = None) -> tuple[Encoded, State]:
        """`Channel.encode`: one payload through one :class:`Sender`."""
        return self.sender(state).send(tensors, relevance=relevance, second_stage=second_stage)

    def encode_model(self, tensors: Mapping[str, np.ndarray]) -> Encoded:
        """The whole model as one float32 payload flagged as a full model."""
        return Sender(Compressor(FULL_MODEL_SPEC, self.manifest)).send(tensors, flags=FLAG_FULL_MODEL)[0]

    def decode(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]:
        """The tensors of a record carrying exactly one payload."""
        payloads = record_payloads(record, max_payload_bytes(manifest))
        if len(payloads) != 1:
            raise PayloadError(f"expected one payload, got {len(payloads)}")
        return decompress(payloads[0], manifest)

    def decode_model(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]:
        """The tensors of a record carrying one payload flagged as a full model."""
        payloads = record_payloads(record, max_payload_bytes(manifest))
        decoded = decode_payload(payloads[0], manifest) if len(payloads) == 1 else None
        if decoded is None or not decoded.flags & FLAG_FULL_MODEL:
            raise PayloadError("a full-model message must carry exactly one payload flagged as a full model")
        return {t.name: t.dequantize() for t in decoded.tensors}
