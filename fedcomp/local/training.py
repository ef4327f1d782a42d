"""Local training and evaluation loops (plain PyTorch, no Flower)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedcomp.local.scaling import freeze_batchnorm, scaled_call
from fedcomp.settings import NON_NEGATIVE, POSITIVE, build, setting


@dataclass(frozen=True)
class TrainSettings:
    """How a client trains locally; each field is a run setting."""

    epochs: int = setting("local_epochs", 1, "local epochs per round", check=POSITIVE)
    lr: float = setting("lr", 0.05, "local learning rate", check=POSITIVE)
    optimizer: str = setting("train.optimizer", "sgd", "local optimizer", choices=("sgd", "adam"))
    momentum: float = setting("train.momentum", 0.9, "SGD momentum", check=NON_NEGATIVE)
    weight_decay: float = setting("train.weight_decay", 0.0, "weight decay", check=NON_NEGATIVE)

    @classmethod
    def from_config(cls, config: Mapping) -> "TrainSettings":
        """The run's local-training settings (resolved settings, as `fedcomp.run.config.resolve` returns)."""
        return build(cls, config)


def model_device(model: nn.Module) -> torch.device:
    """The device holding the model's parameters (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def make_optimizer(params, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


class StepHook(Protocol):
    """What :func:`train` runs around every step besides plain SGD (quantization-aware training,
    `fedcomp.local.qat`): extra optimizer groups, work at each epoch's start, and three points of a step."""

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups to train beside the model's parameters (``lr``: the run's learning rate)."""

    def start_epoch(self, model: nn.Module, loader: DataLoader) -> None:
        """Called before each epoch's first batch."""

    def before_forward(self) -> None:
        """Called before each forward pass."""

    def after_backward(self) -> None:
        """Called between the backward pass and the optimizer step."""

    def after_step(self) -> None:
        """Called after each optimizer step."""


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, loader: DataLoader, scales: Mapping[str, torch.Tensor],
                      layers: Collection[nn.Module]) -> None:
    """Re-estimate the running statistics of the BatchNorm ``layers`` on one pass over ``loader``
    (the scaled forward pass, a plain average over the batches), before training freezes them.

    A pretrained model's statistics describe its source domain; frozen, they would never adapt.
    """
    if not layers:
        return
    device = model_device(model)
    saved = [(layer, layer.momentum) for layer in layers]
    freeze_batchnorm(model)  # the other BatchNorm layers keep their statistics
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over this pass
        layer.train()
    try:
        for x, _ in loader:
            scaled_call(model, scales, x.to(device, non_blocking=True))
    finally:
        for layer, momentum in saved:
            layer.momentum = momentum
            layer.eval()


def train(model: nn.Module, loader: DataLoader, settings: TrainSettings, *,
          trainable: Collection[str] | None = None, scales: Mapping[str, torch.Tensor] | None = None,
          scale_lr: float = 0.05, adapt_batchnorm: bool = False, hook: StepHook | None = None
          ) -> dict[str, float]:
    """Train ``model`` in place; returns the mean training loss and accuracy of the last epoch.

    Each batch moves to the device holding the model's parameters.

    Parameters
    ----------
    trainable: the parameter names to train (default all; the others stay frozen, and
        BatchNorm layers none of whose tensors are trainable keep their running statistics).
    scales: FSFL filter scales (``fedcomp.local.scaling``): the forward pass uses ``s * W``;
        those that require grad are trained in place with plain SGD at ``scale_lr``, and
        BatchNorm statistics are then frozen.
    adapt_batchnorm: with trained scales, first re-estimate the statistics of the BatchNorm layers
        among ``trainable`` on ``loader`` (:func:`refresh_batchnorm`); a fine-tuning run does this in
        its first round, so that a pretrained model's statistics adapt to the new domain once.
    hook: called around every step (:class:`StepHook`; quantization-aware training).
    """
    model.train()
    device = model_device(model)
    names = set(trainable) if trainable is not None else None
    params = [p for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)]
    groups = [{"params": params}] if params else []
    trained_scales = [s for s in (scales or {}).values() if s.requires_grad]
    if trained_scales:
        if adapt_batchnorm and names is not None:
            refresh_batchnorm(model, loader, scales, [m for n, m in model.named_modules() if isinstance(
                m, nn.modules.batchnorm._BatchNorm) and f"{n}.running_mean" in names])
        freeze_batchnorm(model)
        groups.append({"params": trained_scales, "lr": scale_lr, "momentum": 0.0, "weight_decay": 0.0})
    elif names is not None:
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    n.startswith(f"{name}.") for n in names):
                module.eval()
    if hook is not None:
        groups += hook.param_groups(settings.lr)
    if not groups:
        return {"train_loss": float("nan"), "train_accuracy": float("nan")}
    training = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in training]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = make_optimizer(groups, settings)
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    try:
        for _ in range(settings.epochs):
            if hook is not None:
                hook.start_epoch(model, loader)
            # sums stay on the device (float64, as Python's float): no host sync per batch
            total_loss, correct, seen = torch.zeros((), dtype=torch.float64, device=device), 0, 0
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if hook is not None:
                    hook.before_forward()
                optimizer.zero_grad(set_to_none=True)
                logits = scaled_call(model, scales, x) if scales else model(x)
                loss = loss_fn(logits, y)
                loss.backward()
                if hook is not None:
                    hook.after_backward()
                optimizer.step()
                if hook is not None:
                    hook.after_step()
                total_loss += loss.detach().double() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return {"train_loss": float(total_loss) / max(seen, 1), "train_accuracy": int(correct) / max(seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``loader``."""
    model.eval()
    device = model_device(model)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        total_loss += float(loss_fn(logits, y))
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "num_examples": seen}
