"""What a client keeps between rounds, in memory or in a bounded store on disk.

A client of a compressed run keeps its copy of the global model and that copy's version
(bidirectional runs) and its error-feedback residual. The state is one flat dict of arrays,
saved once at the end of every round the client trained in and loaded at the start of the next.

* `MemoryState` keeps it in Flower's ``context.state``: it lives as long as the process
  that runs the node, which is all a single uninterrupted simulation needs.
* `DiskState` keeps it in files, one folder per partition, the two newest rounds only: the
  newest, and the one before it, which a run resumed from an earlier checkpoint goes back
  to (see `prune`). Nothing stays in memory between rounds, so 1,000 clients cost disk, not
  RAM, and the state survives a crash of every process: ``fedcomp run --resume`` continues
  with each client holding exactly what it held after the checkpointed round.

``client.state`` chooses (``auto``: on disk under ``<run folder>/client-state`` when the
run has a folder, which ``fedcomp run`` always gives it; in memory otherwise). A node's
``state-dir`` node config puts its store elsewhere (a real device's own disk).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedcomp.records.checkpoint import write_npz_atomic
from fedcomp.errors import ConfigError

State = dict[str, np.ndarray]
STATE_DIR = "client-state"  # under the run folder
KEEP = 2  # rounds kept per client on disk
MEMORY_KEY = "fedcomp.client"  # context.state key of MemoryState
_FILE = re.compile(r"^r(\d{6})\.npz$")


class ClientState(Protocol):
    """A client's store: what it saved in its last round before ``server_round``."""

    def load(self, server_round: int) -> State: ...

    def save(self, server_round: int, state: Mapping[str, np.ndarray]) -> None: ...


class MemoryState:
    """The state in Flower's ``context.state`` (one ArrayRecord)."""

    def __init__(self, context_state: RecordDict) -> None:
        self.context_state = context_state

    def load(self, server_round: int) -> State:
        """The saved state (empty if none); ``server_round`` does not matter in memory."""
        if MEMORY_KEY not in self.context_state:
            return {}
        return {k: v.numpy() for k, v in self.context_state[MEMORY_KEY].items()}

    def save(self, server_round: int, state: Mapping[str, np.ndarray]) -> None:
        """Replace the saved state."""
        self.context_state[MEMORY_KEY] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


class DiskState:
    """The state as ``<root>/p<partition>/r<round>.npz`` files, the `KEEP` newest rounds."""

    def __init__(self, root: Path, partition: int) -> None:
        self.folder = Path(root) / f"p{partition:05d}"

    def rounds(self) -> list[int]:
        """The rounds this client has state files of, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for m in map(_FILE.match, os.listdir(self.folder)) if m)

    def path(self, server_round: int) -> Path:
        return self.folder / f"r{server_round:06d}.npz"

    def load(self, server_round: int) -> State:
        """The state saved in the newest round before ``server_round`` (empty if none)."""
        earlier = [r for r in self.rounds() if r < server_round]
        if not earlier:
            return {}
        with np.load(self.path(earlier[-1]), allow_pickle=False) as files:
            return {k: files[k] for k in files.files}

    def save(self, server_round: int, state: Mapping[str, np.ndarray]) -> None:
        """Write ``state`` for ``server_round`` (atomically: a crash leaves the old file or the new one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        # not durable: a file per client and round, and a kill -9 loses nothing the page cache holds
        write_npz_atomic(self.path(server_round), state, durable=False)
        for old in self.rounds()[:-KEEP]:
            self.path(old).unlink(missing_ok=True)


def state_root(config: Mapping, node_config: Mapping) -> Path | None:
    """Where a node keeps its state on disk, or None to keep it in memory (``client.state``)."""
    mode = str(config["client.state"])
    folder = node_config.get("state-dir") or (Path(str(config["output.dir"])) / STATE_DIR
                                              if config["output.dir"] else None)
    if mode == "memory" or (mode == "auto" and folder is None):
        return None
    if folder is None:
        raise ConfigError("client.state = 'disk' needs a run folder (output.dir) or a node's state-dir node config")
    return Path(str(folder))


def open_state(config: Mapping, node_config: Mapping, context_state: RecordDict, partition: int) -> ClientState:
    """The store of client ``partition`` under the run's ``client.state`` setting."""
    root = state_root(config, node_config)
    return MemoryState(context_state) if root is None else DiskState(root, partition)


def prune(root: Path, after_round: int) -> int:
    """Delete every client's state files of rounds after ``after_round``; how many were deleted.

    A run resumed from the checkpoint of ``after_round`` replays the later rounds: state a
    client saved in them before the crash belongs to a history that no longer happens.
    """
    removed = 0
    for folder in (f for f in Path(root).glob("p*") if f.is_dir()):
        for name in os.listdir(folder):
            match = _FILE.match(name)
            if (match and int(match.group(1)) > after_round) or name.endswith(".tmp"):
                (folder / name).unlink(missing_ok=True)
                removed += 1
    return removed
