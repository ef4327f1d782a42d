"""Named starting points for a run: each preset is a small table of settings, of one of two kinds.

A *workload* preset says what is learned and by whom (dataset, model, clients, rounds, local training);
a *compression* preset says how updates travel (``up.*``, ``down.*``, FSFL, partial updates, server lr).
Presets compose: ``fedcomp run --preset fmnist --preset fsfl-bidir`` applies them in order, each one
first setting every key of its kind back to the default, so a later preset of a kind replaces an
earlier one of that kind and leaves the other kind alone. A preset only lists what differs from the
defaults in `fedcomp.run.config`; a TOML file and ``--set`` overrides still apply on top of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fedcomp.errors import ConfigError

# the keys each kind of preset owns: exact names, or prefixes ending in a dot
WORKLOAD_KEYS = ("dataset", "model", "num_clients", "rounds", "fraction", "partition", "local_epochs", "batch_size",
                 "lr", "data.", "train.", "server.min_clients", "eval.", "init.")
COMPRESSION_KEYS = ("up.", "down.", "fsfl.", "partial.", "server.lr", "qat.")

FLAGSHIP = "fsfl-bidir"  # what a bare `fedcomp run` runs (on the digits workload)

# FedAvg on it (seed 0): 0.811 after 20 rounds, 0.824 after 30, 0.838 after 40, ~0.85 after 50 (+0.1 point a
# round by then, still rising): 50 rounds keep a run under ~3 minutes on an idle core
FMNIST_ROUNDS = 50

# transfer targets (issue 19): on digits 28x28, pretrained FedAvg is still rising by ~1 point a round at 20
# rounds (0.88; 0.95 at 50) and the partial variants by ~0.5; 20 rounds keep a run under a minute on one core
TRANSFER_ROUNDS = 20
TRANSFER_CLASSES_ROUNDS = 10  # 3,000 training images a round over 28x28 Fashion-MNIST: ~1 minute a run

WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits": ("digits (8x8), cnn, 10 clients, all sampled, iid, 20 rounds, 1 local epoch (the defaults)",
               {}),
    # lr 0.02, not the default 0.05 (momentum 0.9): FedAvg ended 0.8678 against 0.8610 iid (3 seeds), and with
    # Dirichlet 0.3 label skew 0.05 left it at chance for 27 of 50 rounds on seed 0 (0.02 learns from round 1)
    "fmnist": (f"Fashion-MNIST (28x28, apt-get install dataset-fashion-mnist), lenet5, 100 clients of 600 "
               f"examples, 10 sampled per round, iid, {FMNIST_ROUNDS} rounds, 1 local epoch at lr 0.02",
               {"dataset": "fashion-mnist", "model": "lenet5", "num_clients": 100, "fraction": 0.1,
                "rounds": FMNIST_ROUNDS, "lr": 0.02}),
    "fedavg-mlp": ("digits with the fully connected mlp", {"model": "mlp", "lr": 0.1}),
    "fedavg-noniid": ("digits, Dirichlet(0.5) label skew, 30 rounds",
                      {"partition": "dirichlet", "data.alpha": 0.5, "rounds": 30}),
    "quick": ("smoke test, digits, 4 clients, 3 rounds", {"num_clients": 4, "rounds": 3}),
    "cifar10-resnet20": ("CIFAR-10 (local copy), resnet20, 10 clients, 50 rounds",
                         {"dataset": "cifar10", "model": "resnet20", "rounds": 50, "batch_size": 64,
                          "lr": 0.05, "train.weight_decay": 5e-4}),
    # transfer workloads (issue 19): the target side of a pretrained source; add init.weights=FILE from
    # `fedcomp pretrain` (without it they run from scratch) and compose with a compression preset
    "transfer-digits28": ("transfer target, cross-domain: digits resized to 28x28, cnn_bn with a new head "
                          "(source: Fashion-MNIST, 28x28)",
                          {"dataset": "digits", "data.resize": 28, "model": "cnn_bn", "init.reset_head": True,
                           "rounds": TRANSFER_ROUNDS}),
    "transfer-fmnist-classes": ("transfer target, new classes: Fashion-MNIST classes 5-9 (relabelled 0-4), cnn_bn "
                                "with a new head, 100 clients of 300 examples, 10 sampled per round, "
                                f"{TRANSFER_CLASSES_ROUNDS} rounds (source: classes 0-4)",
                                {"dataset": "fashion-mnist", "data.subset": "5-9", "model": "cnn_bn",
                                 "init.reset_head": True, "num_clients": 100, "fraction": 0.1,
                                 "rounds": TRANSFER_CLASSES_ROUNDS}),
}

COMPRESSIONS: dict[str, tuple[str, dict[str, Any]]] = {
    # compressed FL (issue 6); each is a small table to copy and change
    "fedavg": ("uncompressed FedAvg (the baseline the compressed presets are measured against)", {}),
    "topk-ef": ("sparse differential updates upstream: top-2% + uniform qp -32 + ans, error feedback; upstream "
                "only, so on digits dominated by uniform-ef (0.9815 at 290x against 0.9793 at 2x, 3 seeds, "
                "benchmarks/results/comm_savings.md)",
                {"up.scheme": "topk-uniform-ans", "up.fraction": 0.02}),
    "uniform-ef": ("uniform quantization qp -16 + ans both ways, error feedback both ways, no sparsifier: the "
                   "cheapest point within 1 point of FedAvg on digits (290x, -0.07) and ahead of the flagship on "
                   "Fashion-MNIST, where qp -20 is the cheapest within 1 point (94x iid; comm_savings.md)",
                   {"up.scheme": "uniform-ans", "up.qp": -16, "up.error_feedback": True,
                    "down.scheme": "uniform-ans", "down.qp": -16, "down.error_feedback": True}),
    # STC's own 1/400 lost 10.7 points on digits (comm_savings.md): 1/25 is its family's cheapest point
    # within 1 point of FedAvg on digits (-0.15 at 120x) and on iid Fashion-MNIST (-0.72 at 40x)
    "stc": ("Sparse Ternary Compression (Sattler et al. 2019): top-1/25, +-mean, error feedback, both ways "
            "(the paper's 1/400 lost 10.7 points on digits)",
            {"up.scheme": "stc", "up.fraction": 1 / 25, "down.scheme": "stc", "down.fraction": 1 / 25}),
    # qp -30, sparsity 0.97: the cheapest point of the nnc sweep within 1 point of FedAvg on digits (-0.44 at
    # 121x; qp -26, sparsity 0.6 was -0.22 at 86x), comm_savings.md
    "nnc": ("NNCodec recipe: qp -30, statistics sparsity 0.97 with structured factor 0.9, DeepCABAC, "
            "error accumulation, both ways",
            {"up.scheme": "nnc", "up.qp": -30, "up.target_sparsity": 0.97, "up.sparsify": "threshold-structured",
             "up.gain": 0.9, "down.scheme": "nnc", "down.qp": -30, "down.target_sparsity": 0.97,
             "down.sparsify": "threshold-structured", "down.gain": 0.9}),
    "fsfl": ("filter-scaled sparse differential updates upstream: top-1% + scales trained after sparsifying; "
             "upstream only, so on digits dominated by uniform-ef (0.9815 at 290x against 0.9778 at 2x, 3 seeds, "
             "benchmarks/results/comm_savings.md)",
             {"up.scheme": "topk-uniform-ans", "up.fraction": 0.01, "fsfl.mode": "compensate"}),
    # scale lr 0.05 (issue 18): at 0.2, on cross-device Fashion-MNIST (600-example clients, 19 steps a
    # pass), scales moved up to +-100% a round and the fold grew the first conv's weights 13-fold in 20
    # rounds; the run collapsed and diverged.
    # Upstream uniform qp -20 (step 0.031), not top-0.7% (issue 18): a cross-device client trains about
    # once in 10 rounds, and top-0.7% sent 0.7% of its update a turn, the rest waiting in a residual applied
    # rounds later on a moved model. Its one-round update is small (median |u| 4e-4 to 6e-3 per layer of
    # LeNet-5), so qp -12's step (0.125) sends almost nothing either; -20 sends the large entries at once.
    # Downstream a uniform grid (qp -12) with the server's error feedback: the server never sits out, and
    # the count differences of k missed rounds grow slowly in k. A per-tensor step (up.bits = 3) ended
    # 0.3 points higher on Fashion-MNIST but sends a fixed share of every update: ~10x the bytes on digits.
    "fsfl-bidir": ("FSFL both ways: uniform qp -20 up, uniform qp -12 grid down, scales (lr 0.05, qp -36), "
                   "error feedback both ways; tuned for cross-device Fashion-MNIST at lr 0.05 (catchup.md); "
                   "dominated by uniform+EF qp -16 on digits and on Fashion-MNIST (comm_savings.md)",
                   {"up.scheme": "uniform-ans", "up.qp": -20, "up.error_feedback": True,
                    "down.scheme": "uniform-ans", "down.qp": -12, "down.error_feedback": True,
                    "fsfl.mode": "compensate", "fsfl.scale_lr": 0.05, "fsfl.scale_qp": -36}),
    "fsfl-partial": ("FSFL partial updates, for fine-tuning a pretrained model (init.weights): only filter "
                     "scales, BatchNorm, biases and the head train and travel, top-10% + uniform qp -32 + ans, "
                     "scales lr 0.2, error feedback, both ways; the BatchNorm statistics are re-estimated on the local "
                     "data in the first round",
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
}

# `default` is both kinds: every setting at its default (uncompressed FedAvg on digits)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("every setting at its default: uncompressed FedAvg on the digits workload", {}),
    **WORKLOADS, **COMPRESSIONS}

SEPARATORS = re.compile(r"[,+]")


def preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (its name recorded in ``output.preset``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; available presets: {', '.join(PRESETS)}")
    return {**PRESETS[name][1], "output.preset": name}


KIND_KEYS = {"workload": WORKLOAD_KEYS, "compression": COMPRESSION_KEYS, "both": WORKLOAD_KEYS + COMPRESSION_KEYS}


def kind(name: str) -> str:
    """``workload``, ``compression`` or (``default``) ``both``: which settings preset ``name`` owns."""
    preset(name)  # unknown names get the usual one-line error
    return "workload" if name in WORKLOADS else "compression" if name in COMPRESSIONS else "both"


def owned_keys(name: str) -> tuple[str, ...]:
    """The keys preset ``name`` owns (exact names, or prefixes ending in a dot): those of its kind."""
    return KIND_KEYS[kind(name)]


def owns(keys: tuple[str, ...], key: str) -> bool:
    """Whether ``key`` is one of ``keys`` or under one of its dotted prefixes."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in keys)


def split_names(text: str) -> list[str]:
    """Preset names written as one string, separated by commas or ``+`` (``fmnist,fsfl-bidir``)."""
    return [name.strip() for name in SEPARATORS.split(text) if name.strip()]


def compose(names: Sequence[str]) -> dict[str, Any]:
    """One settings layer applying presets ``names`` in order; ``output.preset`` joins their names with ``+``.

    Each preset first sets every key of its kind (`owned_keys`) back to its default, then its own
    values, so a later preset replaces an earlier one of its kind and leaves the other kind alone.
    """
    if not names:
        raise ConfigError("no preset named; available presets: " + ", ".join(PRESETS))
    layer: dict[str, Any] = {}
    for name in names:
        keys = owned_keys(name)
        layer = {k: v for k, v in layer.items() if not owns(keys, k)} | PRESETS[name][1]
    return {**layer, "output.preset": "+".join(names)}
