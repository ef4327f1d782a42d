"""Channels: how a set of named tensors travels in one direction inside a Flower message.

A strategy holds one channel per direction. The dense channel below carries float32
tensors as a plain Flower ``ArrayRecord`` (what stock Flower strategies send, so stock
clients interoperate); compressed channels carry a coded payload in the same slot.
"""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord

from fedcomp.errors import PayloadError
from fedcomp.params import ParamManifest


class Channel(Protocol):
    """Encodes tensors into an ``ArrayRecord`` and back, and says what the payload weighs."""

    def encode(self, tensors: Mapping[str, np.ndarray]) -> ArrayRecord: ...

    def decode(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]: ...

    def payload_bytes(self, record: ArrayRecord) -> int: ...


def dense_record(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Float32 tensors as an ``ArrayRecord`` keyed by name (also the server's model holder)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()})


def record_tensors(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The tensors of a trusted, locally made ``ArrayRecord`` (no checks)."""
    return {k: record[k].numpy() for k in record.keys()}


class DenseChannel:
    """Uncompressed float32 tensors, one Flower ``Array`` per tensor, keyed by name."""

    def encode(self, tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
        return dense_record(tensors)

    def decode(self, record: ArrayRecord, manifest: ParamManifest) -> dict[str, np.ndarray]:
        """The record's tensors, checked against the manifest before use."""
        expected = {t.name: t.shape for t in manifest.tensors}
        if set(record.keys()) != set(expected):
            missing = sorted(set(expected) - set(record.keys()))
            extra = sorted(set(record.keys()) - set(expected))
            raise PayloadError(f"dense record does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        out: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            array = record[name]
            if tuple(array.shape) != shape or array.dtype != "float32":
                raise PayloadError(f"tensor '{name}' is {array.dtype}{tuple(array.shape)}, expected float32{shape}")
            try:
                out[name] = array.numpy()
            except (ValueError, TypeError) as err:
                raise PayloadError(f"tensor '{name}' cannot be read: {err}") from None
        return out

    def payload_bytes(self, record: ArrayRecord) -> int:
        """Bytes of tensor data in the record (each ``.npy`` blob with its short header)."""
        return sum(len(array.data) for array in record.values())
