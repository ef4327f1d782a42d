"""Compile a trained PyTorch MLP into what FantastIC4 runs: 4-bit integer layers.

1. `split`: the model's layers in order; Linear and ReLU (BatchNorm1d folded into the
   Linear before it, Dropout/Identity dropped, a Flatten before the first Linear). With
   ``head=True``, everything up to the last layer the device cannot run stays on the host
   in float (the *frontend*) and only the fully-connected part after it is compiled.
   Otherwise such a layer is rejected with an error that names it.
2. Optionally `finetune`: a short quantization-aware fine-tune on given data (the grid
   assignment runs every step on the float shadow weights, straight-through gradient).
3. Every layer is quantized to a 16-level (4-bit) ECQ grid of its own: integer weights
   ``k`` with ``w = k * step``; a layer already on such a grid (trained quantization-aware)
   keeps it exactly.
4. Activations become integers of ``act_bits`` bits: the input with a signed (or, when
   the calibration inputs are never negative, unsigned) scale, every hidden layer after its
   ReLU unsigned. Scales come from the largest activation on the calibration inputs.
5. Between layers, the int32 accumulator (bias included, in units of ``s_in * step``) is
   requantized to the next layer's scale by an integer multiply and a rounding right
   shift (`fedcomp.fantastic4.engine.requantize`); the last layer's output is its
   accumulator, whose argmax is the prediction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedcomp.errors import ModelError
from fedcomp.fantastic4.engine import ACC_LIMIT, IntLayer, PreparedLayer, prepare, run
from fedcomp.fantastic4.formats import WEIGHT_BITS
from fedcomp.compress.quant.base import Quantizer
from fedcomp.compress.quant.ecq import ECQQuantizer

MULTIPLIER_BITS = 16  # requantization multiplier width (cost.Architecture.requant_bits holds it and the shift)
PASSTHROUGH = (nn.Dropout, nn.Identity)


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaf layers of a (nested) nn.Sequential in execution order; anything else cannot be traced."""
    if isinstance(module, nn.Sequential):
        return [leaf for name, child in module.named_children() for leaf in _leaves(child, f"{prefix}{name}.")]
    if list(module.children()):
        raise ModelError(f"layer '{prefix.rstrip('.') or type(module).__name__}' ({type(module).__name__}) "
                         f"cannot run on FantastIC4: the emulator compiles nn.Sequential stacks of Linear, "
                         f"ReLU and BatchNorm1d layers")
    return [(prefix.rstrip("."), module)]


@dataclass
class DeviceModel:
    """The model split for the device: a float frontend on the host, then folded Linear/ReLU layers."""

    frontend: nn.Module | None
    linears: list[nn.Linear]  # BatchNorm folded in
    relu: list[bool]  # a ReLU after linears[i]
    names: list[str]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the device receives for model inputs ``x``: the frontend's output, flattened."""
        with torch.no_grad():
            if self.frontend is not None:
                self.frontend.eval()
                x = self.frontend(x)
        return x.reshape(len(x), -1)

    def float_forward(self, features: torch.Tensor, weights: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Every layer's float output (after its ReLU), optionally with substituted weights."""
        outs, x = [], features
        for i, linear in enumerate(self.linears):
            w = linear.weight if weights is None else weights[i]
            x = nn.functional.linear(x, w, linear.bias)
            if self.relu[i]:
                x = torch.relu(x)
            outs.append(x)
        return outs


def _fold(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """``bn(linear(x))`` as one Linear (inference statistics)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        folded.weight.copy_(linear.weight.detach() * scale[:, None])
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features)
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias.detach())
    return folded


def _float_copy(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        copy.weight.copy_(linear.weight.detach())
        copy.bias.copy_(linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features))
    return copy


def split(model: nn.Module, head: bool = False) -> DeviceModel:
    """The model's device part (copies; the model is not changed). Raises `ModelError` naming a layer it cannot run."""
    leaves = _leaves(model)
    start = 0
    if head:
        unsupported = [i for i, (_, layer) in enumerate(leaves)
                       if not isinstance(layer, (nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Flatten, *PASSTHROUGH))]
        start = unsupported[-1] + 1 if unsupported else 0
    frontend = copy.deepcopy(nn.Sequential(*[layer for _, layer in leaves[:start]])) if start else None
    linears: list[nn.Linear] = []
    relu: list[bool] = []
    names: list[str] = []
    for name, layer in leaves[start:]:
        if isinstance(layer, nn.Linear):
            linears.append(_float_copy(layer))
            relu.append(False)
            names.append(name)
        elif isinstance(layer, nn.ReLU) and linears and not relu[-1]:
            relu[-1] = True
        elif isinstance(layer, nn.BatchNorm1d) and linears and not relu[-1]:
            linears[-1] = _fold(linears[-1], layer)
        elif isinstance(layer, nn.Flatten) and not linears:
            continue
        elif isinstance(layer, PASSTHROUGH):
            continue
        else:
            hint = "" if head else " (edge.head=true runs only the fully-connected part after it)"
            raise ModelError(f"layer '{name}' ({type(layer).__name__}) cannot run on FantastIC4: it runs "
                             f"Linear layers with ReLU, BatchNorm1d folded into the Linear before it{hint}")
    if not linears:
        raise ModelError("the model has no Linear layer FantastIC4 could run")
    return DeviceModel(frontend, linears, relu, names)


def existing_grid(weight: np.ndarray) -> tuple[np.ndarray, float] | None:
    """``(k, step)`` when ``weight`` already is ``float32(k) * float32(step)`` with 4-bit ``k``, else None.

    A model trained quantization-aware on a 4-bit grid (``fedcomp.local.qat``) then runs on the
    device as it was trained, bit for bit, instead of being quantized a second time. The step
    is the smallest non-zero magnitude divided by 1..8 (the grid need not use level 1).
    """
    w = np.asarray(weight, dtype=np.float32)
    magnitudes = np.abs(w[w != 0])
    if magnitudes.size == 0:
        return None
    smallest = magnitudes.min()
    low, high = -(2 ** (WEIGHT_BITS - 1)), 2 ** (WEIGHT_BITS - 1) - 1
    for level in range(1, high + 2):
        step = np.float32(smallest / level)
        k = np.rint(w / step)
        if k.min() >= low and k.max() <= high and np.array_equal(k.astype(np.float32) * step, w):
            return k.astype(np.int64), float(step)
    return None


def grid_of(quantizer: Quantizer, weight: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """Integer grid indices ``k`` and the step with ``weight ~ k * step``, from any grid quantizer.

    Weights already on a 4-bit grid keep it (:func:`existing_grid`).
    """
    found = existing_grid(weight)
    if found is not None:
        return found
    qt = quantizer.quantize(weight, name)
    k = qt.symbols.astype(np.int64)
    values = qt.dequantize()
    nonzero = np.flatnonzero(k)
    step = float(values.flat[nonzero[0]] / k.flat[nonzero[0]]) if len(nonzero) else 1.0
    low, high = -(2 ** (WEIGHT_BITS - 1)), 2 ** (WEIGHT_BITS - 1) - 1
    if k.min(initial=0) < low or k.max(initial=0) > high:
        raise ModelError(f"layer '{name}': the quantizer used grid indices outside the 4-bit range {low}..{high}")
    if not np.allclose(values, k * step, rtol=1e-6, atol=0):
        raise ModelError(f"layer '{name}': the quantizer's values are not on a uniform grid k * step")
    return k, step


def default_quantizer(device: DeviceModel, gamma: float) -> ECQQuantizer:
    """ECQ on a 4-bit grid, the entropy constraint decayed by layer size as in DESIGN 4.7."""
    return ECQQuantizer(bits=WEIGHT_BITS, gamma=gamma, max_size=max(lin.weight.numel() for lin in device.linears))


def finetune(device: DeviceModel, loader: DataLoader, quantizer: Quantizer, epochs: int = 1,
             lr: float = 0.01) -> None:
    """Quantization-aware fine-tune of the device layers in place (frontend frozen).

    Each step quantizes the float shadow weights, runs the forward pass with the quantized
    ones and passes the gradient straight through to the shadow weights.
    """
    params = [p for lin in device.linears for p in lin.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for x, y in loader:
            features = device.features(x)
            weights = []
            for name, lin in zip(device.names, device.linears):
                k, step = grid_of(quantizer, lin.weight.detach().cpu().numpy(), name)
                quantized = torch.from_numpy((k * step).astype(np.float32))
                weights.append(lin.weight + (quantized - lin.weight).detach())
            loss = loss_fn(device.float_forward(features, weights)[-1], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def requant_parameters(ratio: float) -> tuple[int, int]:
    """``(multiplier, shift)``: ``multiplier / 2**shift ~ ratio``, an unsigned ``MULTIPLIER_BITS``-bit multiplier."""
    if not ratio > 0:
        raise ModelError(f"requantization ratio must be positive, got {ratio}")
    exponent = int(np.floor(np.log2(ratio)))
    shift = max(MULTIPLIER_BITS - 1 - exponent, 1)
    multiplier = int(round(ratio * 2.0**shift))
    if multiplier >= 2**MULTIPLIER_BITS:
        raise ModelError(f"requantization ratio {ratio} needs more than a {MULTIPLIER_BITS}-bit multiplier")
    return multiplier, shift


@dataclass(frozen=True)
class CompiledNet:
    """What the device holds: the integer layers, the input scale, and the host-side frontend."""

    device: DeviceModel
    layers: list[IntLayer]
    steps: list[float]
    input_scale: float
    input_low: int
    input_high: int
    act_bits: int
    prepared: list[PreparedLayer]

    def quantize_input(self, x: torch.Tensor) -> np.ndarray:
        """Model inputs to the device's integer input activations (integer values in a float32 array)."""
        features = self.device.features(x)
        return torch.round(features / self.input_scale).clamp_(self.input_low, self.input_high).cpu().numpy()

    def logits(self, x: torch.Tensor) -> np.ndarray:
        """The device's integer outputs (accumulators of the last layer) for model inputs ``x``."""
        return run(self.prepared, self.quantize_input(x))

    def accuracy(self, loader: DataLoader) -> float:
        correct = seen = 0
        for x, y in loader:
            correct += int((self.logits(x).argmax(axis=1) == y.cpu().numpy()).sum())
            seen += len(y)
        return correct / max(seen, 1)


def compile_model(model: nn.Module, calibration: torch.Tensor, *, act_bits: int = 8, gamma: float = 0.1,
                  head: bool = False, quantizer: Quantizer | None = None, finetune_loader: DataLoader | None = None,
                  finetune_epochs: int = 1, finetune_lr: float = 0.01) -> CompiledNet:
    """Compile ``model`` for FantastIC4; ``calibration`` are model inputs that set the activation scales."""
    if not 2 <= act_bits <= 16:
        raise ModelError(f"activation bits must be in 2..16, got {act_bits}")
    device = split(model, head)
    quantizer = quantizer or default_quantizer(device, gamma)
    if finetune_loader is not None and finetune_epochs > 0:
        finetune(device, finetune_loader, quantizer, finetune_epochs, finetune_lr)
    grids = [grid_of(quantizer, lin.weight.detach().cpu().numpy(), name)
             for name, lin in zip(device.names, device.linears)]
    features = device.features(calibration)
    quantized = [torch.from_numpy((k * step).astype(np.float32)) for k, step in grids]
    with torch.no_grad():
        outputs = [o.cpu().numpy() for o in device.float_forward(features, quantized)]
    signed = bool((features < 0).any())
    unsigned_max, signed_max = 2**act_bits - 1, 2 ** (act_bits - 1) - 1
    top = signed_max if signed else unsigned_max
    scale_in = float(features.abs().max()) / top or 1.0
    input_low, input_high = (-top - 1 if signed else 0), top
    layers: list[IntLayer] = []
    s_in, bound = scale_in, top + 1 if signed else top
    for i, ((k, step), lin) in enumerate(zip(grids, device.linears)):
        name, last = device.names[i], i == len(device.linears) - 1
        acc_scale = s_in * step
        bias = np.rint(lin.bias.detach().cpu().numpy().astype(np.float64) / acc_scale).astype(np.int64)
        if last:
            multiplier = shift = None
            low, high, s_out = -ACC_LIMIT, ACC_LIMIT - 1, acc_scale
            if device.relu[i]:
                low = 0
        else:
            s_out = float(np.abs(outputs[i]).max()) / (unsigned_max if device.relu[i] else signed_max) or 1.0
            multiplier, shift = requant_parameters(acc_scale / s_out)
            low, high = (0 if device.relu[i] else -signed_max - 1), (unsigned_max if device.relu[i] else signed_max)
        layers.append(IntLayer(name, k.astype(np.int8), bias, multiplier, shift, low, high, bound))
        s_in, bound = s_out, max(abs(low), abs(high))
    return CompiledNet(device, layers, [step for _, step in grids], scale_in, input_low, input_high, act_bits,
                       [prepare(layer) for layer in layers])
