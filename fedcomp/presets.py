"""Named starting points for a run: each preset is a small table of settings.

A preset only overrides what differs from the defaults in `fedcomp.config`; a TOML file
and ``--set`` overrides still apply on top of it.
"""

from __future__ import annotations

from typing import Any

from fedcomp.errors import ConfigError


PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("uncompressed FedAvg, digits, cnn, 10 clients, iid, 20 rounds", {}),
    "fedavg-mlp": ("uncompressed FedAvg with the fully connected mlp on digits", {"model": "mlp", "lr": 0.1}),
    "fedavg-noniid": ("uncompressed FedAvg, Dirichlet(0.5) label skew, 30 rounds",
                      {"partition": "dirichlet", "data.alpha": 0.5, "rounds": 30}),
    "quick": ("smoke test: 4 clients, 3 rounds", {"num_clients": 4, "rounds": 3}),
    "cifar10-resnet20": ("uncompressed FedAvg, CIFAR-10 (local copy), resnet20, 10 clients, 50 rounds",
                         {"dataset": "cifar10", "model": "resnet20", "rounds": 50, "batch_size": 64,
                          "lr": 0.05, "train.weight_decay": 5e-4}),
}


def preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (its name recorded in ``output.preset``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; available presets: {', '.join(PRESETS)}")
    return {**PRESETS[name][1], "output.preset": name}
