"""Partitions kept on disk, so that a new process maps its partition instead of rebuilding it.

A deployed ClientApp is a fresh process for every message (Flower 1.42 starts one
``flwr-clientapp`` per message, whatever the isolation mode), and building a partition means
importing flwr-datasets and Hugging Face ``datasets`` (2 s) before splitting. The first
process to build a partition writes every client's indices to one file; the next ones map it.

A file is named by a hash of everything that decides the partition: the labels and group
keys themselves (so a changed dataset misses), the scheme and its parameters, the seed, the
versions of flwr-datasets and ``datasets`` (their shuffles and samplers draw the split) and
the source of `fedcomp.data.partition`. Its content is one int64 array:
``[MAGIC, FORMAT, crc32, num_clients, offsets (num_clients + 1), indices...]``; a file that
does not read back whole (truncated, overwritten, a foreign file) is rebuilt and replaced,
with one warning line. Writes go through a temporary file and an atomic rename, so a reader
never sees half a file. The folder keeps the ``MAX_FILES`` most recently used files.

The folder is ``$FEDCOMP_CACHE_DIR/partitions`` (default ``~/.cache/fedcomp``); setting
``FEDCOMP_CACHE_DIR=off`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zlib
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_VARIABLE = "FEDCOMP_CACHE_DIR"
MAGIC = 0x66636D70_61727431  # "fcmpart1"
FORMAT = 1
MAX_FILES = 64  # at most this many partitionings are kept (a 60,000-example one is 0.5 MB)
HEADER = 4  # MAGIC, FORMAT, crc32, num_clients


def cache_dir() -> Path | None:
    """The folder partitions are cached in, or None when ``FEDCOMP_CACHE_DIR=off``."""
    root = os.environ.get(CACHE_VARIABLE, "")
    if root.lower() == "off":
        return None
    if not root:
        return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "fedcomp" / "partitions"
    return Path(root).expanduser() / "partitions"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def partition_key(labels: np.ndarray, groups: Sequence | None, **arguments: object) -> str:
    """A hex digest of everything that decides a partition: labels, group keys, ``arguments`` and the code."""
    digest = hashlib.sha256()
    digest.update(f"format={FORMAT};flwr-datasets={_version('flwr-datasets')};datasets={_version('datasets')};"
                  .encode())
    digest.update(Path(__file__).with_name("partition.py").read_bytes())
    digest.update(repr(sorted(arguments.items())).encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    if groups is not None:
        digest.update("\0".join(map(str, groups)).encode())
    return digest.hexdigest()[:32]


def _pack(parts: Sequence[np.ndarray]) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    indices = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.zeros(0, np.int64)
    body = np.concatenate([offsets, indices])
    return np.concatenate([np.array([MAGIC, FORMAT, zlib.crc32(body.tobytes()), len(parts)], np.int64), body])


def _unpack(packed: np.ndarray) -> tuple[np.ndarray, ...]:
    """The partitions a file holds; ValueError when it is not a whole file of this format."""
    if packed.dtype != np.int64 or packed.ndim != 1 or len(packed) < HEADER + 1:
        raise ValueError("not a partition file")
    magic, fmt, crc, count = (int(v) for v in packed[:HEADER])
    if magic != MAGIC or fmt != FORMAT or not 0 < count <= len(packed) - HEADER - 1:
        raise ValueError("not a partition file of this format")
    body = packed[HEADER:]
    if zlib.crc32(np.ascontiguousarray(body).tobytes()) != crc:
        raise ValueError("checksum mismatch")
    offsets, indices = body[:count + 1], body[count + 1:]
    if offsets[0] != 0 or offsets[-1] != len(indices) or np.any(np.diff(offsets) < 0):
        raise ValueError("inconsistent offsets")
    return tuple(np.array(indices[offsets[i]:offsets[i + 1]]) for i in range(count))


def _write(path: Path, parts: Sequence[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, _pack(parts))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _evict(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently used partition files."""
    files = []
    for path in folder.glob("*.npy"):
        try:
            files.append((path.stat().st_mtime, path))
        except OSError:
            continue
    for _, path in sorted(files, reverse=True)[keep:]:
        path.unlink(missing_ok=True)


def cached(key: str, build: Callable[[], Sequence[np.ndarray]], folder: Path,
           max_files: int = MAX_FILES) -> tuple[np.ndarray, ...]:
    """The partitions under ``key`` in ``folder``, read from its file; built with ``build`` and saved
    when the file is missing or unreadable."""
    path = folder / f"{key}.npy"
    if path.is_file():
        try:
            parts = _unpack(np.load(path, mmap_mode="r", allow_pickle=False))
            os.utime(path)  # recently used: kept by the eviction
            return parts
        except (OSError, ValueError, EOFError) as exc:
            log.warning("partition cache file %s is unreadable (%s); rebuilding it", path, exc)
    parts = tuple(build())
    try:
        _write(path, parts)
        _evict(folder, max_files)
    except OSError as exc:  # a read-only or full disk: the cache is only a shortcut
        log.warning("could not write the partition cache file %s (%s)", path, exc)
    return parts
