"""The entropy-codec interface and the registry of codecs.

A codec turns a list of int32 symbol arrays (one per tensor, any shapes) into one byte
string, and back given the shapes. The decoder knows the shapes from the wire header
(bounded by the model's manifest), so a codec never reads a size from the stream that it
has not been given; any inconsistency in the stream raises
:class:`~fedcomp.errors.PayloadError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from fedcomp.errors import ConfigError


class Codec(ABC):
    """Lossless coder of int32 symbol arrays. ``id`` is the byte the wire format stores."""

    name: str
    id: int

    @abstractmethod
    def encode(self, symbols: Sequence[np.ndarray]) -> bytes:
        """Code all arrays (int32, C order) into one byte string."""

    @abstractmethod
    def decode(self, data: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        """Decode int32 arrays of the given shapes; PayloadError if ``data`` does not fit."""


_FACTORIES: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make a codec available to :func:`get_codec` by its name and id."""
    for other in _FACTORIES.values():
        if other.id == cls.id and other.name != cls.name:
            raise RuntimeError(f"codec id {cls.id} used by both {other.name} and {cls.name}")
    _FACTORIES[cls.name] = cls
    return cls


def codec_names() -> list[str]:
    """Names of every registered codec (including optional ones that may be uninstalled)."""
    _load_builtin()
    return sorted(_FACTORIES)


def get_codec(name: str) -> Codec:
    """A codec by name; ConfigError listing the valid names for an unknown one."""
    _load_builtin()
    if name not in _FACTORIES:
        raise ConfigError(f"unknown codec {name!r}; valid codecs: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name]()


def codec_by_id(codec_id: int) -> Codec | None:
    """The codec with wire id ``codec_id``, or None if there is none."""
    _load_builtin()
    for cls in _FACTORIES.values():
        if cls.id == codec_id:
            return cls()
    return None


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    from fedcomp.compress.codec import ans, deepcabac, passthrough, raw  # noqa: F401
