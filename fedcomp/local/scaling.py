"""Filter-wise scaling (FSFL): one trainable scale per output filter of every Conv/Linear layer.

This is our definition, built from the FSFL paper's abstract and NNC's local scaling
adaptation (the paper's full text was not available; DESIGN 4.5). Every Conv/Linear layer
``L`` gets a vector ``s`` with one entry per output filter, exchanged as the tensor
``L.weight`` + :data:`SCALE_SUFFIX`; the effective weight is ``s * W`` broadcast over the
filter (the bias is not scaled). Scales are initialised to 1.

The model itself is never changed: training runs the scaled forward pass through
``torch.func.functional_call``, and :func:`fold` turns ``(W, s)`` into ``(s * W, 1)``
with float32 numpy arithmetic that the server and every client compute identically.
Folding leaves the model's outputs unchanged up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedcomp.compress.params import TensorSpec, load_arrays

SCALE_SUFFIX = ".fsfl_scale"
SCALED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def scaled_weights(model: nn.Module) -> dict[str, int]:
    """``{weight name: number of output filters}`` of every Conv/Linear layer, in model order."""
    return {f"{name}.weight" if name else "weight": int(module.weight.shape[0])
            for name, module in model.named_modules() if isinstance(module, SCALED_LAYERS)}


def scale_name(weight: str) -> str:
    return weight + SCALE_SUFFIX


def is_scale(name: str) -> bool:
    return name.endswith(SCALE_SUFFIX)


def weight_of(scale: str) -> str:
    return scale[: -len(SCALE_SUFFIX)]


def scale_specs(model: nn.Module) -> list[TensorSpec]:
    """The exchanged scale tensors of ``model``: one 1-D tensor per scaled layer."""
    return [TensorSpec(scale_name(w), (n,)) for w, n in scaled_weights(model).items()]


def unit_scales(model: nn.Module) -> dict[str, np.ndarray]:
    """Every scale tensor at 1 (the initial value, and the value after folding)."""
    return {s.name: np.ones(s.shape, np.float32) for s in scale_specs(model)}


def _broadcast(scale: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return scale.reshape((-1,) + (1,) * (weight.ndim - 1))


def fold(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``W <- s * W`` and ``s <- 1`` for every scale in ``tensors`` (float32, deterministic)."""
    out = dict(tensors)
    for name, scale in tensors.items():
        if is_scale(name):
            weight = weight_of(name)
            out[weight] = (_broadcast(scale, tensors[weight]) * tensors[weight]).astype(np.float32)
            out[name] = np.ones_like(scale, dtype=np.float32)
    return out


def effective(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The plain model tensors ``tensors`` stand for: scales folded in, scale entries dropped."""
    return {k: v for k, v in fold(tensors).items() if not is_scale(k)}


def scaled_call(model: nn.Module, scales: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with every weight that has a scale replaced by ``s * W`` (differentiable in both)."""
    replaced = {}
    params = dict(model.named_parameters())
    for name, scale in scales.items():
        weight = params[weight_of(name)]
        # .to: scales may live on the CPU while the model is on a GPU (sim.device); differentiable, a no-op on CPU
        replaced[weight_of(name)] = scale.to(weight.device).reshape((-1,) + (1,) * (weight.dim() - 1)) * weight
    return functional_call(model, replaced, (x,))


def freeze_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode: in training mode a BN right after a scaled conv
    re-normalises the filter and cancels its scale (DESIGN 4.5)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def scale_updates(scales: Mapping[str, torch.Tensor], base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``s - s_t`` of every scale in ``scales``: what a client sends of its scales (float32 numpy)."""
    return {name: scale.detach().numpy() - base[name] for name, scale in scales.items()}


def compensation(model: nn.Module, scales: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor],
                 base: Mapping[str, np.ndarray],
                 fit: Callable[[nn.Module, Mapping[str, torch.Tensor]], object]
                 ) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """FSFL's compensation stage, as a sender's second stage: the scales absorb part of what the
    sparsifier dropped.

    Parameters
    ----------
    model : nn.Module
        The client's model; its weights are overwritten with the ones the server will rebuild.
    scales : mapping
        Every scale tensor (the forward pass uses them all); ``sent`` are the ones trained and sent.
    sent : mapping
        The scales this client sends (a subset of ``scales``).
    base : mapping
        The global tensors ``W_t`` the updates apply to.
    fit : callable
        ``fit(model, scales)`` trains the scales that require grad, the weights frozen.

    Returns
    -------
    callable
        Given the receiver's reconstruction of the weight updates, trains the sent scales on the
        weights ``W_t + update`` alone and returns their updates ``s - s_t``.
    """
    def stage(reconstruction: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not sent:
            return {}
        load_arrays(model, {name: base[name] + delta for name, delta in reconstruction.items()})
        for name, scale in scales.items():
            scale.requires_grad_(name in sent)
        fit(model, scales)
        return scale_updates(sent, base)
    return stage
