"""A reader of IDX files, the format of the original MNIST and Fashion-MNIST releases.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order, big-endian.
Files may be gzip-compressed (``.gz``); the reader decompresses them itself.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from fedcomp.errors import DatasetError

# type code -> big-endian numpy dtype (LeCun's IDX description)
IDX_TYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
HEADER = 4
DIM_BYTES = 4


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """The array held by the IDX bytes ``data``; ``source`` names them in errors.

    Raises `DatasetError` when the magic number, the type code, the header or the payload size is wrong.
    """
    if len(data) < HEADER:
        raise DatasetError(f"{source}: {len(data)} bytes, too short for an IDX header (4-byte magic number)")
    zero, zero2, code, ndim = data[:HEADER]
    if zero or zero2:
        raise DatasetError(f"{source}: not an IDX file (magic number {data[:HEADER].hex()} does not start with 0000)")
    if code not in IDX_TYPES:
        raise DatasetError(f"{source}: unknown IDX type code 0x{code:02x}; known: "
                           f"{', '.join(f'0x{c:02x}' for c in IDX_TYPES)}")
    start = HEADER + DIM_BYTES * ndim
    if len(data) < start:
        raise DatasetError(f"{source}: truncated header ({len(data)} bytes; {ndim} dimensions need {start})")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=HEADER))
    dtype = np.dtype(IDX_TYPES[code])
    expected = start + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(f"{source}: {problem}: dimensions {'x'.join(map(str, dims)) or '()'} of "
                           f"{dtype.itemsize}-byte values need {expected} bytes, the file has {len(data)}")
    return np.frombuffer(data, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """The array in the IDX file ``path`` (gzip-compressed when its name ends in ``.gz``)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetError(f"{path}: not a complete gzip file ({err})") from None
    return parse_idx(raw, str(path))
