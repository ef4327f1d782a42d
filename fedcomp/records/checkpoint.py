"""Per-round checkpoints: everything a killed run needs to continue from its last completed round.

One file, ``checkpoint.npz`` in the run folder, replaced atomically after every round
(written to a temporary file, fsync'd, renamed over the old one, the folder fsync'd): a
crash at any moment leaves the previous round's checkpoint or this round's, never a mix.
It holds plain arrays (no pickle, loaded with ``allow_pickle=False``) and one JSON document:

* ``global/<name>``: the global model as the strategy holds it (with FSFL scales);
* ``strategy/<name>``: the strategy's arrays (the server residual, the replay history);
* ``rng/<name>``: the server process's torch, numpy and Python RNG states;
* ``meta``: the round, the strategy's other state (meter records, client versions) and
  the run's rows so far (``rounds.jsonl`` is rewritten from them on resume).

Client state lives with the clients (`fedcomp.exchange.client_state`).
"""

from __future__ import annotations

import io
import json
import os
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fedcomp.errors import ConfigError

CHECKPOINT = "checkpoint.npz"
FORMAT = 1
Arrays = dict[str, np.ndarray]


@dataclass
class Checkpoint:
    """A run's state after ``round``."""

    round: int
    global_tensors: Arrays
    strategy_arrays: Arrays
    strategy_meta: dict[str, Any]
    rows: list[dict[str, Any]]
    initial: dict[str, float] | None
    rng: Arrays


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old content or the new, whole.

    ``durable`` also fsyncs the file and its folder, so that the new content survives a power
    loss; without it, it survives the process being killed (the page cache holds it).
    """
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(temporary, path)
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray], durable: bool = True) -> None:
    """`write_atomic` of ``arrays`` as an ``.npz`` file."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue(), durable)


def rng_states() -> Arrays:
    """This process's torch, numpy and Python RNG states as arrays."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state().numpy(), "numpy_keys": np.asarray(keys, np.uint32),
            "numpy_rest": np.array([pos, has_gauss], np.int64), "numpy_gauss": np.array(gauss, np.float64),
            "python": np.array([version, *mt], np.int64),
            "python_gauss": np.array([] if python_gauss is None else [python_gauss], np.float64)}


def restore_rng(states: Arrays) -> None:
    """Set this process's RNGs to what `rng_states` saved."""
    torch.set_rng_state(torch.from_numpy(np.array(states["torch"], np.uint8)))
    pos, has_gauss = (int(v) for v in states["numpy_rest"])
    np.random.set_state(("MT19937", states["numpy_keys"], pos, has_gauss, float(states["numpy_gauss"])))
    python = [int(v) for v in states["python"]]
    gauss = states["python_gauss"]
    random.setstate((python[0], tuple(python[1:]), float(gauss[0]) if gauss.size else None))


def save(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` as the run folder's ``checkpoint.npz`` (atomically)."""
    meta = {"format": FORMAT, "round": checkpoint.round, "strategy": checkpoint.strategy_meta,
            "rows": checkpoint.rows, "initial": checkpoint.initial}
    arrays = {**{f"global/{k}": v for k, v in checkpoint.global_tensors.items()},
              **{f"strategy/{k}": v for k, v in checkpoint.strategy_arrays.items()},
              **{f"rng/{k}": v for k, v in checkpoint.rng.items()},
              "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    write_npz_atomic(Path(run_dir) / CHECKPOINT, arrays)


def load(run_dir: Path) -> Checkpoint | None:
    """The run folder's checkpoint, or None when it has none (the run died before its first round ended)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as files:
            arrays = {k: files[k] for k in files.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{path} is not a readable fedcomp checkpoint: {err}") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path} has checkpoint format {meta.get('format')!r}; this fedcomp reads {FORMAT}")

    def part(prefix: str) -> Arrays:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    return Checkpoint(int(meta["round"]), part("global/"), part("strategy/"), meta["strategy"], meta["rows"],
                      meta["initial"], part("rng/"))
