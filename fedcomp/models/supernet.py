"""EC2T's first step: a super-network scaled up from a trained model (width and depth).

The EC2T authors scale a base network by width and depth multipliers (compound scaling)
and train the scaled network in full precision before ternarizing it. Here the scaled
network starts from the trained base itself (Net2Net, Chen et al. 2016): widening copies
hidden units and divides their outgoing weights by the number of copies, deepening inserts
identity layers after a ReLU (``relu(I h) = h`` for ``h >= 0``), so the super-network
computes the base network's function before its own float training. Multilayer
perceptrons only: ``[Flatten,] (Linear, ReLU)*, Linear``.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp_layers(model: nn.Sequential) -> tuple[list[nn.Module], list[nn.Linear]]:
    """``(prefix, linears)``: the leading non-Linear modules, and the Linear layers of a ReLU MLP."""
    modules = list(model)
    prefix = []
    while modules and not isinstance(modules[0], nn.Linear):
        if not isinstance(modules[0], nn.Flatten):
            raise ValueError(f"scale_mlp needs [Flatten,] (Linear, ReLU)*, Linear; found {type(modules[0]).__name__}")
        prefix.append(modules.pop(0))
    linears = modules[0::2]
    if (not linears or not all(isinstance(m, nn.Linear) for m in linears)
            or not all(isinstance(m, nn.ReLU) for m in modules[1::2]) or len(modules) % 2 == 0):
        raise ValueError("scale_mlp needs [Flatten,] (Linear, ReLU)*, Linear")
    return prefix, linears


@torch.no_grad()
def scale_mlp(model: nn.Sequential, width: float = 1.0, extra_depth: int = 0, noise: float = 0.0,
              generator: torch.Generator | None = None) -> nn.Sequential:
    """A super-network of the ReLU MLP ``model``: every hidden layer ``width`` times as wide, plus
    ``extra_depth`` hidden layers before the output layer; with ``noise=0`` it computes exactly
    ``model``'s function (up to float rounding).

    Widening a hidden layer of ``n`` units to ``m = round(width * n)``: unit ``j`` copies unit
    ``g(j)`` (``g(j) = j`` for ``j < n``, drawn uniformly from ``generator`` otherwise), and the
    next layer's input weights of unit ``j`` are divided by the number of copies of ``g(j)``.
    ``noise``: each copied unit's incoming weights get Gaussian noise of that fraction of the
    layer's weight std, so copies do not train identically. ``model`` is left unchanged.

    Returns:
        The new ``nn.Sequential`` (Flatten kept, Linear/ReLU layers new).
    """
    if width < 1.0:
        raise ValueError(f"width must be >= 1, got {width}")
    if extra_depth < 0:
        raise ValueError(f"extra_depth must be >= 0, got {extra_depth}")
    prefix, linears = _mlp_layers(model)
    weights = [lin.weight.detach().clone() for lin in linears]
    biases = [lin.bias.detach().clone() for lin in linears]
    for i in range(len(linears) - 1):  # widen hidden layer i: rows of layer i, columns of layer i + 1
        n = weights[i].shape[0]
        m = int(round(width * n))
        extra = torch.randint(0, n, (m - n,), generator=generator)
        source = torch.cat([torch.arange(n), extra])
        copies = torch.bincount(source, minlength=n).to(weights[i].dtype)
        w_in = weights[i][source].clone()
        if noise > 0 and m > n:
            scale = noise * float(weights[i].std())
            w_in[n:] += scale * torch.randn(w_in[n:].shape, generator=generator, dtype=w_in.dtype)
        weights[i], biases[i] = w_in, biases[i][source].clone()
        weights[i + 1] = weights[i + 1][:, source] / copies[source]
    layers: list[nn.Module] = list(prefix)
    for w, b in zip(weights[:-1], biases[:-1]):
        layers += [_linear(w, b), nn.ReLU()]
    hidden = weights[-1].shape[1]
    for _ in range(extra_depth):
        layers += [_linear(torch.eye(hidden, dtype=weights[-1].dtype), torch.zeros(hidden)), nn.ReLU()]
    layers.append(_linear(weights[-1], biases[-1]))
    return nn.Sequential(*layers)


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)
    return layer
