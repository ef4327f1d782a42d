"""A run's final global model on disk: ``model.npz`` (float32 tensors plus a JSON description).

Written with ``output.save_model=true``; read by ``fedcomp f4``. Loading never unpickles:
the description is a plain string array, read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from torch import nn

from fedcomp.errors import ModelError
from fedcomp.models import build_model
from fedcomp.compress.params import load_arrays, state_arrays

FILENAME = "model.npz"
META_KEY = "__fedcomp__"


def save_model(path: str | Path, model: nn.Module, model_name: str, num_classes: int,
               input_shape: tuple[int, ...]) -> Path:
    """Write ``model``'s tensors and how to rebuild it (registered name, classes, input shape) to ``path``."""
    meta = {"model": model_name, "num_classes": int(num_classes), "input_shape": [int(d) for d in input_shape]}
    path = Path(path)
    np.savez(path, **{META_KEY: np.array(json.dumps(meta))}, **state_arrays(model))
    return path


def save_final_model(run_dir: Path, model: nn.Module, config: Mapping[str, Any]) -> None:
    """With ``output.save_model``, the run's final global model into ``run_dir/model.npz``."""
    if config["output.save_model"]:
        from fedcomp.run.experiment import run_dataset

        bundle = run_dataset(config)
        save_model(Path(run_dir) / FILENAME, model, str(config["model"]), bundle.num_classes, bundle.input_shape)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model saved at ``path`` (a ``model.npz`` or a run folder holding one) and its description."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise ModelError(f"no saved model at {path} (a run writes one with --set output.save_model=true)")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[META_KEY]))
            arrays = {k: data[k] for k in data.files if k != META_KEY}
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{path} is not a model saved by fedcomp: {err}") from None
    model = build_model(meta["model"], meta["num_classes"], tuple(meta["input_shape"]))
    expected = state_arrays(model)
    if set(arrays) != set(expected) or any(arrays[k].shape != v.shape for k, v in expected.items()):
        raise ModelError(f"{path} does not hold the tensors of model {meta['model']!r}")
    load_arrays(model, arrays)
    return model, meta
