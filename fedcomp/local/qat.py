"""Quantization-aware training with ECQ, ECQx or EC2T (DESIGN 4.7), plain PyTorch.

The model's parameters are the full-precision *shadow* weights. Every step, each weight
tensor (2-D and up: Linear and Conv weights; biases stay float) is quantized from its
shadow, the forward and backward passes run on the quantized values, and the optimizer
applies that gradient to the shadow weights (straight-through estimator). ECQ/ECQx keep
the grid of the weights training started from (the ECQx authors fix their centroids before
QAT), so the clients of a federated round, starting from one global model, share it. After
training the model holds the quantized weights; the shadows are returned beside them (a
federated client sends its shadows, see :func:`local_train`). ``docs/explanation/ecq.md``
compares all of this with the authors' code.

STE choices, made on purpose:
- The shadow gradient is passed straight through unscaled. DESIGN 4.7 mentions scaling it
  by the centroid for non-zero weights (TTQ's rule); TTQ's latent weights live on a
  normalised [-1, 1] scale, ours on the weights' own scale, where that factor (~|w|, e.g.
  0.05) would shrink the latent learning rate twenty-fold. We did not adopt it.
- EC2T's ``w_p`` and ``w_n`` are trained parameters (per layer, with the same optimizer, at
  the learning rate divided by the layer's size, as their gradients are sums over it).
  The quantized weight is ``+w_p`` (symbol 1), ``0`` or ``-w_n`` (symbol -1) with
  ``w_n > 0``, so the exact gradients are ``dL/dw_p = sum_{i: +} g_i`` and
  ``dL/dw_n = -sum_{i: -} g_i`` (``g`` the gradient at the quantized weight). We keep that
  minus sign: TTQ writes ``+sum`` because its ``W^n`` is the signed (negative) value;
  with the magnitude as parameter, dropping the sign would push ``w_n`` the wrong way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedcomp.compress.quant.base import Quantizer
from fedcomp.compress.quant.tensor import QuantizedTensor, QuantKind, float32_tensor
from fedcomp.compress.quant.ecq import EC2TQuantizer, ECQQuantizer, ECQxQuantizer
from fedcomp.local.relevance import LRP_BATCH, accumulated_relevance
from fedcomp.local.training import TrainSettings, train
from fedcomp.settings import NON_NEGATIVE, POSITIVE, PROBABILITY, Setting, between, build, setting

METHODS = ("ecq", "ecqx", "ec2t")


@dataclass(frozen=True)
class QATSettings:
    """Which quantizer runs every step and its knobs (``bits`` is ignored by EC2T).

    ``method`` is the ``qat.method`` setting (`SETTINGS`), whose ``none`` means no QAT; the
    other fields are the ``qat.*`` settings they declare.
    """

    method: str = "ecq"
    bits: int = setting("qat.bits", 4, "QAT grid bits (ecq, ecqx)", check=between(2, 8))
    gamma: float = setting("qat.gamma", 0.05, "QAT entropy-constraint strength", check=NON_NEGATIVE)
    p: float = setting("qat.p", 0.1, "QAT ECQx sparsity tolerance below ECQ", check=PROBABILITY)
    # 8192, not 64: from 64 examples 35-60% of the weights of Fashion-MNIST's 512x3 MLP have exactly zero
    # relevance (ECQx zeroes them) and ECQx QAT fell 4.5-14 points below ECQ; from 8192, 1-8% and 1-5 points
    # (benchmarks/results/reproduction-fashion-mnist.md). A client with fewer local examples sums over all of them.
    relevance_batch: int = setting("qat.relevance_batch", 8192, "QAT ECQx: local examples (the first of each epoch) "
                                   f"whose LRP relevances are summed, in passes of up to {LRP_BATCH}", check=POSITIVE)
    start_round: int = setting("qat.start_round", 1, "federated QAT from this round on; earlier rounds train in "
                               "float (a warm-up)", check=POSITIVE)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"QAT method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.relevance_batch <= 0:
            raise ValueError(f"relevance_batch must be positive, got {self.relevance_batch}")

    @classmethod
    def from_config(cls, config: Mapping, server_round: int | None = None) -> "QATSettings | None":
        """The run's ``qat.*`` settings; None when ``qat.method`` is ``none`` (plain local training)
        or ``server_round`` is given and comes before ``qat.start_round`` (the float warm-up)."""
        if config["qat.method"] == "none":
            return None
        settings = build(cls, config, method=config["qat.method"])
        return None if server_round is not None and server_round < settings.start_round else settings


#: The switch: quantization-aware local training by which method, or none.
SETTINGS: dict[str, Setting] = {
    "qat.method": Setting("none", "quantization-aware local training: none, ecq, ecqx or ec2t",
                          choices=("none", *METHODS)),
}


class QATResult(NamedTuple):
    """Training metrics, the full-precision shadow weights (the model holds the quantized ones),
    and the model as tensors for a payload: the quantized weights and every other parameter
    as float32, in parameter order."""

    metrics: dict[str, float]
    shadow: dict[str, torch.Tensor]
    tensors: list[QuantizedTensor]


def quantized_names(model: nn.Module) -> list[str]:
    """The parameters QAT quantizes: every weight with two or more dimensions."""
    return [name for name, p in model.named_parameters() if p.ndim >= 2 and name.endswith("weight")]


class _Quantize:
    """The per-step quantization of one model's weights (holds EC2T's trained values): the
    :class:`~fedcomp.local.training.StepHook` that makes :func:`~fedcomp.local.training.train`
    quantization-aware."""

    def __init__(self, model: nn.Module, settings: QATSettings) -> None:
        self.params = {n: p for n, p in model.named_parameters() if n in set(quantized_names(model))}
        max_size = max((p.numel() for p in self.params.values()), default=0) or None
        self.settings = settings
        self.scales: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if settings.method == "ec2t":
            self.quantizer = EC2TQuantizer(settings.gamma, max_size)
            for name, p in self.params.items():
                _, pos, neg = self.quantizer.assign(p.detach().cpu().numpy())
                self.scales[name] = tuple(torch.tensor(v, device=p.device, requires_grad=True) for v in (pos, neg))
        elif settings.method == "ecqx":
            self.quantizer = ECQxQuantizer(settings.bits, settings.gamma, settings.p, max_size)
        else:
            self.quantizer = ECQQuantizer(settings.bits, settings.gamma, max_size)
        # ECQ/ECQx keep the grid of the weights they start from, as the ECQx authors fix their
        # centroids before QAT: clients that start a round from one global model share it
        self.steps = {n: self.quantizer.grid(p.detach().cpu().numpy())[0] for n, p in self.params.items()
                      if isinstance(self.quantizer, ECQQuantizer)}
        self.symbols: dict[str, torch.Tensor] = {}
        self.frozen = False
        self.relevance: dict[str, np.ndarray] | None = None
        self.shadow: dict[str, torch.Tensor] = {}

    def param_groups(self, lr: float) -> list[dict]:
        """One group per EC2T layer for its ``w_p, w_n`` (the model's parameters are trained as usual).

        Their gradients are sums over the layer's weights, so each layer's pair gets the
        learning rate divided by the layer's size (a mean-gradient step).
        """
        return [{"params": list(pair), "lr": lr / self.params[name].numel()} for name, pair in self.scales.items()]

    def start_epoch(self, model: nn.Module, loader: DataLoader) -> None:
        """ECQx: the epoch's LRP relevances, from the shadow weights."""
        self.relevance = _relevance(model, loader, self.settings)

    def before_forward(self) -> None:
        """Save the shadow weights and quantize them: forward and backward run on the quantized values."""
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        self.apply(self.relevance)

    @torch.no_grad()
    def after_backward(self) -> None:
        """EC2T's scale gradients, then the shadows back: the step updates them (straight-through).

        With the assignment frozen the shadows get no gradient: only ``w_p, w_n`` and the
        unquantized parameters move.
        """
        self.backward_scales()
        for name, p in self.params.items():
            p.copy_(self.shadow[name])
            if self.frozen and p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def freeze(self) -> None:
        """EC2T's second phase: fix every layer's ternary assignment at the current shadows and ``w_p, w_n``."""
        shadow = {n: p.detach().clone() for n, p in self.params.items()}
        self.apply(None)
        self.frozen = True
        for name, p in self.params.items():
            p.copy_(shadow[name])

    def after_step(self) -> None:
        self.clamp_scales()

    @torch.no_grad()
    def apply(self, relevance: dict[str, np.ndarray] | None) -> dict[str, QuantizedTensor]:
        """Overwrite every quantized parameter with its quantization (the caller saved the shadows)."""
        tensors = {}
        for name, p in self.params.items():
            w = p.detach().cpu().numpy()
            if self.settings.method == "ec2t":
                pos, neg = self.scales[name]
                if self.frozen:
                    t = QuantizedTensor(name, self.symbols[name].cpu().numpy(), QuantKind.TERNARY,
                                        (float(np.float32(pos.item())), float(np.float32(neg.item()))))
                else:
                    symbols, pos_value, neg_value = self.quantizer.assign(w, float(pos), float(neg))
                    t = QuantizedTensor(name, symbols, QuantKind.TERNARY, (pos_value, neg_value))
            else:
                t = self.quantizer.quantize(w, name, None if relevance is None else relevance.get(name),
                                            self.steps[name])
            p.copy_(torch.from_numpy(t.dequantize()))
            self.symbols[name] = torch.from_numpy(t.symbols).to(p.device)
            tensors[name] = t
        return tensors

    def backward_scales(self) -> None:
        """EC2T: the exact gradients of ``w_p`` and ``w_n`` from the gradient at the quantized weights."""
        for name, (pos, neg) in self.scales.items():
            grad, sym = self.params[name].grad, self.symbols[name]
            pos.grad = grad[sym > 0].sum().reshape(())
            neg.grad = -grad[sym < 0].sum().reshape(())

    @torch.no_grad()
    def clamp_scales(self) -> None:
        """EC2T: ``w_p, w_n >= 0.675 * std(shadow)`` per layer (the EC2T authors' floor: neither value vanishes)."""
        for name, (pos, neg) in self.scales.items():
            floor = max(0.675 * float(self.params[name].detach().std()), 1e-8)
            pos.clamp_(min=floor)
            neg.clamp_(min=floor)


def _relevance(model: nn.Module, loader: DataLoader, qat: QATSettings) -> dict[str, np.ndarray] | None:
    if qat.method != "ecqx":
        return None
    return accumulated_relevance(model, loader, qat.relevance_batch)


def qat_train(model: nn.Module, loader: DataLoader, settings: TrainSettings, qat: QATSettings,
              frozen_epochs: int = 0) -> QATResult:
    """Train ``model`` in place with per-step ECQ/ECQx/EC2T quantization and a straight-through gradient.

    The training loop is :func:`~fedcomp.local.training.train`'s, with the quantization as its
    hook. ECQx recomputes its LRP relevances at the start of every epoch, summed over the first
    ``qat.relevance_batch`` examples of ``loader`` (:func:`~fedcomp.local.relevance.accumulated_relevance`),
    from the shadow weights; the final assignment uses the last epoch's relevances, those the
    shadows were trained under (relevances recomputed from the trained shadows assign differently:
    on Fashion-MNIST's 512x3 MLP at 4 bits that cost 0.5 and 2.6 points, 2 seeds). On return the model holds the
    quantized weights; ``shadow`` holds the full-precision ones.
    ``frozen_epochs`` (EC2T only): the EC2T authors' second phase, that many more epochs with
    every layer's ternary assignment frozen, training ``w_p, w_n`` and the unquantized
    parameters (biases).
    Metrics: the last epoch's mean training loss and accuracy, and the quantized weights' sparsity.
    """
    if frozen_epochs and qat.method != "ec2t":
        raise ValueError(f"frozen_epochs is EC2T's second phase; method is {qat.method!r}")
    state = _Quantize(model, qat)
    metrics = train(model, loader, settings, hook=state)
    if frozen_epochs:
        state.freeze()
        metrics = train(model, loader, replace(settings, epochs=frozen_epochs), hook=state)
    shadow = {n: p.detach().clone() for n, p in state.params.items()}
    quantized = state.apply(state.relevance)  # ECQx: the last epoch's relevances, those training adapted to
    zeros = sum(int((s == 0).sum()) for s in state.symbols.values())
    total = sum(s.numel() for s in state.symbols.values())
    tensors = [quantized.get(n) or float32_tensor(n, p.detach().cpu().numpy()) for n, p in model.named_parameters()]
    return QATResult({**metrics, "weight_sparsity": zeros / max(total, 1)}, shadow, tensors)


def local_train(model: nn.Module, loader: DataLoader, settings: TrainSettings,
                qat: QATSettings | None) -> dict[str, float]:
    """A client's local training: :func:`~fedcomp.local.training.train`, or :func:`qat_train` when ``qat`` is set.

    The ClientApp's hook: ``local_train(model, loader, TrainSettings.from_config(cfg),
    QATSettings.from_config(cfg))``. With QAT the model ends on the full-precision shadow
    weights, so the client's update is ``shadow - global model`` and the global model is the
    average of the shadows; its quantized form (the grid of its weights, what the next round's
    clients train through and the edge device runs) is a function of it. Sending the
    quantized weights instead restarts every round's shadows on an average of grid points:
    the sub-step progress the straight-through estimator accumulates is lost each round, and
    FedAvg of the mlp on digits fell from 0.96 to 0.81 (0.29 at lr 0.01, whose steps are
    mostly rounded away; see docs/explanation/ecq.md).
    """
    if qat is None:
        return train(model, loader, settings)
    result = qat_train(model, loader, settings, qat)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in result.shadow:
                p.copy_(result.shadow[name])
    return result.metrics


@torch.no_grad()
def quantize_model(model: nn.Module, quantizer: Quantizer,
                   relevance: dict[str, np.ndarray] | None = None) -> list[QuantizedTensor]:
    """Post-training quantization: every weight :func:`quantized_names` lists, in place.

    Returns the quantized tensors, plus every other parameter as lossless float32, in
    state-dict order (what a model payload carries; see :func:`fedcomp.compress.codec.encode_payload`).
    """
    quantize = set(quantized_names(model))
    tensors = []
    for name, p in model.named_parameters():
        if name in quantize:
            t = quantizer.quantize(p.detach().cpu().numpy(), name, None if relevance is None else relevance.get(name))
            p.copy_(torch.from_numpy(t.dequantize()))
        else:
            t = float32_tensor(name, p.detach().cpu().numpy())
        tensors.append(t)
    return tensors


def compressed_sizes(tensors: list[QuantizedTensor]) -> dict[str, int]:
    """Payload bytes of ``tensors`` (one model) through every installed entropy codec."""
    from fedcomp.compress.codec import encode_payload, get_codec
    from fedcomp.compress.codec.deepcabac import available as deepcabac_available
    from fedcomp.compress.params import ParamManifest

    manifest = ParamManifest.from_arrays({t.name: t.symbols for t in tensors})
    codecs = ["ans", "raw"] + (["deepcabac"] if deepcabac_available() else [])
    return {name: len(encode_payload(tensors, manifest, get_codec(name))) for name in codecs}
