"""Weights from outside a run: reading a weights file and loading it into a built model.

Three sources are accepted (``init.weights``):

* a model fedcomp saved, ``model.npz`` (or its run folder): float32 arrays plus a JSON
  description, read with ``allow_pickle=False``;
* a torch ``state_dict`` file, read with ``torch.load(weights_only=True)``, so nothing but
  tensors and plain containers is unpickled;
* ``python:module:function``, called without arguments, returning a state dict.

Every failure is one `ModelError` line naming the file and, where one is at fault, the tensor.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedcomp.errors import ModelError
from fedcomp.plugins import is_plugin, load_plugin

SAVED_FILENAME = "model.npz"  # what fedcomp writes (output.save_model, fedcomp pretrain)
META_KEY = "__fedcomp__"  # the JSON description inside a saved model


def read_saved(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the description of a model fedcomp saved (a ``.npz`` or a run folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / SAVED_FILENAME
    if not path.is_file():
        raise ModelError(f"no saved model at {path} (a run writes one with --set output.save_model=true)")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[META_KEY]))
            arrays = {k: data[k] for k in data.files if k != META_KEY}
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"{path} is not a model saved by fedcomp: {err}") from None
    return arrays, meta


def _state_dict(returned: Any, source: str) -> dict[str, torch.Tensor]:
    """``returned`` as a name -> tensor dict, or one ModelError saying it is not a state dict."""
    if not isinstance(returned, Mapping) or not returned:
        raise ModelError(f"{source} is not a state dict (a mapping of tensor names to tensors): it holds "
                         f"{type(returned).__name__}")
    out = {}
    for name, value in returned.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise ModelError(f"{source} is not a state dict: entry {name!r} is {type(value).__name__}, not a tensor")
        out[name] = value
    return out


def absolute_reference(reference: str) -> str:
    """``reference`` with a relative path made absolute (the simulation's processes run in another folder)."""
    return reference if not reference or is_plugin(reference) else str(Path(reference).expanduser().resolve())


def read_weights(reference: str) -> dict[str, torch.Tensor]:
    """The state dict named by ``reference``: a fedcomp ``.npz`` or run folder, a torch file, or a plugin."""
    if is_plugin(reference):
        return _state_dict(load_plugin(reference, ModelError)(), reference)
    path = Path(reference).expanduser()
    if path.is_dir() or path.suffix == ".npz":
        return _state_dict(read_saved(path)[0], reference)
    if not path.is_file():
        raise ModelError(f"init.weights: no file {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # what torch's weights-only unpickler says of any other object
            raise ModelError(f"{path} holds a pickled object other than tensors; refused (only tensors are "
                             "loaded, with torch.load(weights_only=True))") from None
        raise ModelError(f"{path} is not a torch state dict file (it does not unpickle)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise ModelError(f"{path} is not a torch state dict file ({str(err).splitlines()[0]})") from None
    return _state_dict(loaded, str(path))


def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str,
                 fresh: Collection[str] = ()) -> None:
    """Copy ``weights`` into ``model``, every tensor of its state dict but those in ``fresh``.

    ``fresh`` tensors keep the model's own initial values (and are ignored in ``weights``), as
    do integer buffers ``weights`` lacks (BatchNorm's batch counter, which fedcomp does not save).
    A missing, extra or misshapen tensor raises one ModelError naming it.
    """
    state = model.state_dict()
    fresh = set(fresh) | {n for n, t in state.items() if not t.is_floating_point() and n not in weights}
    for name, tensor in state.items():
        if name in fresh:
            continue
        if name not in weights:
            raise ModelError(f"{source} has no tensor {name!r}, which the model needs")
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ModelError(f"tensor {name!r} is {tuple(weights[name].shape)} in {source}, the model needs "
                             f"{tuple(tensor.shape)} (if it is the classifier of another label set, set "
                             "init.reset_head=true)")
    extra = sorted(set(weights) - set(state))
    if extra:
        raise ModelError(f"{source} has tensor {extra[0]!r}, which the model lacks (another architecture?)")
    with torch.no_grad():
        for name, tensor in state.items():
            if name not in fresh:
                tensor.copy_(weights[name].to(tensor.dtype))
