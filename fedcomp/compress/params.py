"""The parameter manifest: the ordered names and shapes of the tensors a model exchanges.

Server and clients build the same manifest from the same model, so a payload can name a
tensor by its index into the manifest instead of by its name, and a decoder can bound every
size it reads by what the model really holds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch


@dataclass(frozen=True)
class TensorSpec:
    """One exchanged tensor: its name in the state dict and its shape."""

    name: str
    shape: tuple[int, ...]

    @functools.cached_property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class ParamManifest:
    """Ordered tensor specs; index ``i`` names the same tensor on every party."""

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "ParamManifest":
        return cls(tuple(TensorSpec(k, tuple(int(d) for d in v.shape)) for k, v in arrays.items()))

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "ParamManifest":
        return cls.from_arrays(state_arrays(model))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        return {t.name: i for i, t in enumerate(self.tensors)}

    def index(self, name: str) -> int:
        """The position of tensor ``name`` (KeyError if the manifest has none)."""
        return self._positions[name]

    def __contains__(self, name: object) -> bool:
        return name in self._positions

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, i: int) -> TensorSpec:
        return self.tensors[i]

    @property
    def num_values(self) -> int:
        return sum(t.size for t in self.tensors)

    @property
    def dense_bytes(self) -> int:
        """Bytes of every tensor as float32: what uncompressed FedAvg sends."""
        return 4 * self.num_values


def exchanged_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys that travel: every parameter and floating-point buffer.

    Integer buffers such as BatchNorm's ``num_batches_tracked`` stay local.
    """
    return _exchanged(model.state_dict())


def _exchanged(state: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def state_tensors(model: torch.nn.Module, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The model's exchanged tensors as float32 tensors (copies) on the model's device, in state-dict order."""
    state = model.state_dict()
    keys = _exchanged(state) if keys is None else list(keys)
    return {k: state[k].detach().to(torch.float32, copy=True) for k in keys}


def state_arrays(model: torch.nn.Module, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The model's exchanged tensors as float32 numpy arrays (copies), in state-dict order."""
    return {k: v.cpu().numpy() for k, v in state_tensors(model, keys).items()}


def load_arrays(model: torch.nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` into the model's state dict in place (only the keys given)."""
    state = model.state_dict()
    with torch.no_grad():
        for k, v in arrays.items():
            state[k].copy_(torch.from_numpy(np.asarray(v)).to(state[k].dtype))
