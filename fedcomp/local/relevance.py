"""Per-weight LRP relevances for ECQx (DESIGN 4.7), with zennit.

zennit propagates relevance through the network with a composite of rules (for conv nets
and MLPs: epsilon for dense layers, z-plus for convolutions, flat for the first layer,
BatchNorm passed through: :class:`zennit.composites.EpsilonPlusFlat`). Its hooks hand
every layer's *input* relevance to the layer below, so the relevance arriving at a
layer's output ``R_out`` is the gradient at that output during zennit's backward pass.
The weight rule is ours: a weight's relevance is its share of its output's relevance,

    R_w = sum over batch and positions of  w * a * R_out / (z + eps * sign(z)),

i.e. ``w * dz/dw`` contracted with ``R_out / z`` -- computed with autograd on the layer's
recorded input ``a`` (``z`` is the layer's output, bias included). Biases get the same
rule with ``dz/db = 1``. The output relevance is each example's logit of its true class (zero
for the other classes), as in the ECQx authors' code (``docs/explanation/ecq.md``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # zennit imports torchvision (1.4 s): only a run computing relevances pays for it
    from zennit.core import Composite

from fedcomp.local.training import model_device

#: Layers that get weight relevances (zennit's "linear" layers).
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Most examples one LRP pass takes (:func:`accumulated_relevance` sums over passes of this size).
LRP_BATCH = 256


def stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps * sign(z)`` with sign(0) = 1, as zennit's epsilon rule stabilises."""
    return z + ((z == 0).to(z.dtype) + z.sign()) * eps


def default_composite() -> Composite:
    """Epsilon for dense layers, z-plus for convolutions, flat for the first layer, BN passed."""
    from zennit.composites import EpsilonPlusFlat

    return EpsilonPlusFlat()


def _layer_output(module: nn.Module, a: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(a, weight, bias)
    return module._conv_forward(a, weight, bias)


def weight_relevance(
    model: nn.Module,
    batch_x: torch.Tensor,
    batch_y: torch.Tensor,
    composite: Composite | None = None,
    eps: float = 1e-6,
) -> dict[str, np.ndarray]:
    """LRP relevance of every weight and bias of the model's Linear/Conv layers on one batch.

    Keyed like the model's state dict (``"0.weight"``, ``"0.bias"``, ...), float32 arrays
    of the parameters' shapes, summed over the batch (unnormalised; ECQx normalises per
    layer), on the host whatever device the model is on; the batch moves to the model's
    device. The model is left as it was (mode, parameters, no hooks).

    LRP runs in float64 on a copy of the model: ``R_out / z`` amplifies the last-bit differences
    between CPUs' float32 kernels into different ECQx assignments (the same run gave different
    bytes on two machines); in float64 they stay below float32's resolution.
    """
    return _relevance64(_float64_copy(model), batch_x, batch_y, composite or default_composite(), eps)


def _float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` in eval mode: LRP's own, so the caller's model keeps its mode, dtype and hooks."""
    return copy.deepcopy(model).double().eval()


def _relevance64(model: nn.Module, batch_x: torch.Tensor, batch_y: torch.Tensor, composite: Composite,
                 eps: float = 1e-6) -> dict[str, np.ndarray]:
    """:func:`weight_relevance` on ``model``, a :func:`_float64_copy`, which is left without hooks."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, WEIGHTED)}
    inputs: dict[str, torch.Tensor] = {}
    out_relevance: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs[name] = args[0].detach()
            output.register_hook(lambda grad: out_relevance.__setitem__(name, grad.detach()))
        return hook

    device = model_device(model)
    x = batch_x.to(device).detach().double().requires_grad_(True)
    batch_y = batch_y.to(device)
    with composite.context(model):
        handles = [m.register_forward_hook(recorder(n)) for n, m in layers.items()]
        try:
            logits = model(x)
            true_logit = F.one_hot(batch_y.long(), logits.shape[-1]).to(logits.dtype) * logits.detach()
            torch.autograd.grad(logits, x, grad_outputs=true_logit)
        finally:  # the copy serves every pass of accumulated_relevance
            for handle in handles:
                handle.remove()

    relevances: dict[str, np.ndarray] = {}
    for name, module in layers.items():
        if name not in out_relevance:  # a layer the output does not depend on
            continue
        weight = module.weight.detach().clone().requires_grad_(True)
        bias = None if module.bias is None else module.bias.detach().clone().requires_grad_(True)
        z = _layer_output(module, inputs[name], weight, bias)
        share = out_relevance[name] / stabilise(z.detach(), eps)
        params = [weight] + ([bias] if bias is not None else [])
        grads = torch.autograd.grad(z, params, grad_outputs=share)
        prefix = f"{name}." if name else ""
        relevances[prefix + "weight"] = (weight.detach() * grads[0]).cpu().numpy().astype(np.float32)
        if bias is not None:
            relevances[prefix + "bias"] = (bias.detach() * grads[1]).cpu().numpy().astype(np.float32)
    return relevances


def accumulated_relevance(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    examples: int,
    batch: int = LRP_BATCH,
    composite: Composite | None = None,
) -> dict[str, np.ndarray]:
    """:func:`weight_relevance` summed over the first ``examples`` examples of ``loader``.

    The examples go through LRP in passes of at most ``batch`` (memory stays bounded); the
    relevances are sums over examples, so the passes add up (in float64, returned as float32).
    Relevances from a few examples are exactly zero for every weight whose unit none of them
    activates (ECQx then zeroes it): the ECQx authors accumulate them over the training set.
    ``examples`` up to ``batch`` is one pass, exactly :func:`weight_relevance` on those
    examples. The loader is read only as far as needed; fewer examples if it ends first.
    """
    if examples <= 0 or batch <= 0:
        raise ValueError(f"examples and batch must be positive, got {examples} and {batch}")
    composite = composite or default_composite()
    twin = _float64_copy(model)  # one copy for every pass
    total: dict[str, np.ndarray] = {}
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    seen = done = 0

    def flush(size: int) -> None:
        nonlocal xs, ys, done
        x, y = torch.cat(xs), torch.cat(ys)
        xs, ys = [x[size:]], [y[size:]]
        done += size
        for name, r in _relevance64(twin, x[:size], y[:size], composite).items():
            total[name] = total[name] + r if name in total else r.astype(np.float64)

    for x, y in loader:
        xs.append(x)
        ys.append(y)
        seen += len(y)
        while min(seen, examples) - done >= min(batch, examples - done) > 0:
            flush(min(batch, examples - done))
        if seen >= examples:
            break
    if min(seen, examples) > done:
        flush(min(seen, examples) - done)
    return {name: r.astype(np.float32) for name, r in total.items()}
