"""A run's final global model on disk: ``model.npz`` (float32 tensors plus a JSON description).

Written with ``output.save_model=true`` and by ``fedcomp pretrain``; read by ``fedcomp f4``
and by ``init.weights`` (`fedcomp.models.weights`). Loading never unpickles: the description
is a plain string array, read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from fedcomp.errors import ModelError
from fedcomp.models import build_model
from fedcomp.models.weights import META_KEY, SAVED_FILENAME, load_weights, read_saved
from fedcomp.compress.params import state_arrays

FILENAME = SAVED_FILENAME


def save_model(path: str | Path, model: nn.Module, model_name: str, num_classes: int,
               input_shape: tuple[int, ...]) -> Path:
    """Write ``model``'s tensors and how to rebuild it (registered name, classes, input shape) to ``path``."""
    meta = {"model": model_name, "num_classes": int(num_classes), "input_shape": [int(d) for d in input_shape]}
    path = Path(path)
    np.savez(path, **{META_KEY: np.array(json.dumps(meta))}, **state_arrays(model))
    return path


def save_run_model(path: str | Path, model: nn.Module, config: Mapping[str, Any]) -> Path:
    """The run's model to ``path``: a torch state dict when it ends in ``.pt``/``.pth``, else a saved
    model (``model.npz`` format); ``init.weights`` reads both."""
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        return path
    from fedcomp.run.experiment import run_dataset

    bundle = run_dataset(config)
    return save_model(path, model, str(config["model"]), bundle.num_classes, bundle.input_shape)


def save_final_model(run_dir: Path, model: nn.Module, config: Mapping[str, Any]) -> None:
    """With ``output.save_model``, the run's final global model into ``run_dir/model.npz``."""
    if config["output.save_model"]:
        save_run_model(Path(run_dir) / FILENAME, model, config)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model saved at ``path`` (a ``model.npz`` or a run folder holding one) and its description."""
    arrays, meta = read_saved(path)
    model = build_model(meta["model"], meta["num_classes"], tuple(meta["input_shape"]))
    try:
        load_weights(model, {k: torch.from_numpy(v) for k, v in arrays.items()}, str(path))
    except ModelError as err:
        raise ModelError(f"{path} does not hold the tensors of model {meta['model']!r}: {err}") from None
    return model, meta
