"""Named starting points for a run: each preset is a small table of settings.

A preset only overrides what differs from the defaults in `fedcomp.run.config`; a TOML file
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
    # compressed FL (issue 6); each is a small table to copy and change
    "fedavg": ("uncompressed FedAvg (the baseline the compressed presets are measured against)", {}),
    "topk-ef": ("sparse differential updates upstream: top-2% + uniform qp -32 + ans, error feedback",
                {"up.scheme": "topk-uniform-ans", "up.fraction": 0.02}),
    "stc": ("Sparse Ternary Compression (Sattler et al. 2019): top-1/400, +-mean, error feedback, both ways",
            {"up.scheme": "stc", "down.scheme": "stc"}),
    "nnc": ("NNCodec recipe: qp -26, statistics sparsity 0.6 with structured factor 0.9, DeepCABAC, "
            "error accumulation, both ways",
            {"up.scheme": "nnc", "up.qp": -26, "up.target_sparsity": 0.6, "up.sparsify": "threshold-structured",
             "up.gain": 0.9, "down.scheme": "nnc", "down.qp": -26, "down.target_sparsity": 0.6,
             "down.sparsify": "threshold-structured", "down.gain": 0.9}),
    "fsfl": ("filter-scaled sparse differential updates upstream: top-1% + scales trained after sparsifying",
             {"up.scheme": "topk-uniform-ans", "up.fraction": 0.01, "fsfl.mode": "compensate"}),
    # scale lr 0.05 (issue 18): at 0.2, on cross-device Fashion-MNIST (600-example clients, 19 steps a
    # pass), scales moved up to +-100% a round and the fold grew the first conv's weights 13-fold in 20
    # rounds; the run collapsed and diverged
    "fsfl-bidir": ("FSFL both ways: top-0.7% up and down, scales (lr 0.05, qp -36), error feedback, server lr 1.5",
                   {"up.scheme": "topk-uniform-ans", "up.fraction": 0.007, "down.scheme": "topk-uniform-ans",
                    "down.fraction": 0.007, "fsfl.mode": "compensate", "fsfl.scale_lr": 0.05, "fsfl.scale_qp": -36,
                    "server.lr": 1.5}),
    "fsfl-partial": ("FSFL partial updates, for fine-tuning a pretrained model (init.weights): only filter "
                     "scales, BatchNorm, biases and the head train and travel, top-10% + uniform qp -32 + ans, "
                     "scales lr 0.2, error feedback, both ways",
                     {"up.scheme": "topk-uniform-ans", "up.fraction": 0.1, "down.scheme": "topk-uniform-ans",
                      "down.fraction": 0.1, "fsfl.mode": "joint", "fsfl.scale_lr": 0.2,
                      "partial.groups": "scales,bn,bias,head"}),
    # entropy-constrained quantization of the updates (issue 8; DESIGN 4.7)
    "ecqx": ("ECQx updates upstream: 2-bit grid, gamma 0.6, LRP relevances, ans, error feedback",
             {"up.scheme": "ecqx-ans", "up.bits": 2, "up.gamma": 0.6}),
    "ec2t": ("EC2T updates upstream: ternary {-w_n, 0, +w_p}, gamma 0.6, ans, error feedback",
             {"up.scheme": "ec2t-ans", "up.gamma": 0.6}),
    "fsfl-ecqx-bidir": ("FSFL with ECQx updates both ways (2-bit, gamma 0.6; the server has no data, so ECQ "
                        "downstream), scales trained after quantizing, error feedback both sides",
                        {"up.scheme": "ecqx-ans", "up.bits": 2, "up.gamma": 0.6, "down.scheme": "ecqx-ans",
                         "down.bits": 2, "down.gamma": 0.6, "fsfl.mode": "compensate", "fsfl.scale_lr": 0.2,
                         "fsfl.scale_qp": -36}),
    # transfer workloads (issue 19): the target side of a pretrained source; add init.weights=FILE from
    # `fedcomp pretrain` (without it they run from scratch) and compose with a compression preset's keys
    "transfer-digits28": ("transfer target, cross-domain: digits resized to 28x28, cnn_bn with a new head "
                          "(source: Fashion-MNIST, 28x28)",
                          {"dataset": "digits", "data.resize": 28, "model": "cnn_bn", "init.reset_head": True}),
}


def preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (its name recorded in ``output.preset``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; available presets: {', '.join(PRESETS)}")
    return {**PRESETS[name][1], "output.preset": name}
