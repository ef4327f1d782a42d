"""The emulated FantastIC4 edge client: evaluates a global model as the device would run it.

`EdgeEvaluator` is built from a run's ``edge.*`` settings. It holds the edge client's data
(the run's test split to score on; the first ``edge.calibration`` training examples to set
the activation scales and, with ``edge.qat_epochs``, to fine-tune) and, per call,
compiles the model to 4 bits, runs it bit-exactly on the test split and costs it on the
calibrated FPGA or ASIC model. `check` does the same compile at start-up, so a model the
device cannot run fails before the first round with one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from fedcomp.errors import ModelError
from fedcomp.fantastic4.compile import CompiledNet, compile_model
from fedcomp.fantastic4.cost import Architecture, NetworkCost, architecture, network_cost
from fedcomp.settings import NON_NEGATIVE, POSITIVE, Setting, between, build, setting

METRICS = ("f4_accuracy", "f4_latency_us", "f4_energy_uj", "f4_model_bytes")

#: The switch; the other ``edge.*`` settings are `EdgeSettings`'s fields.
SETTINGS: dict[str, Setting] = {
    "edge.fantastic4": Setting(False, "evaluate the global model on an emulated FantastIC4 edge device"),
}


@dataclass(frozen=True)
class EdgeSettings:
    """The edge client's settings; each field is an ``edge.*`` run setting."""

    every: int = setting("edge.every", 1, "edge evaluation every N rounds (and after the last)", check=POSITIVE)
    target: str = setting("edge.target", "fpga", "the calibrated implementation to cost on", choices=("fpga", "asic"))
    act_bits: int = setting("edge.act_bits", 8, "bit width of the integer activations", check=between(2, 16))
    gamma: float = setting("edge.gamma", 0.1, "ECQ entropy constraint of the 4-bit weights (0: nearest grid level)",
                           check=NON_NEGATIVE)
    head: bool = setting("edge.head", False, "run only the fully-connected layers after the model's last other "
                         "layer on the device (the rest in float on the host)")
    format: str = setting("edge.format", "cheapest", "compact format of every layer, or the cheapest per layer",
                          choices=("cheapest", "dense", "csr", "cer", "cser"))
    objective: str = setting("edge.objective", "energy", "what 'cheapest' minimises",
                             choices=("energy", "cycles", "bytes"))
    qat_epochs: int = setting("edge.qat_epochs", 0, "quantization-aware fine-tune epochs on the calibration examples",
                              check=NON_NEGATIVE)
    calibration: int = setting("edge.calibration", 256, "training examples the edge client holds (activation "
                               "scales, fine-tune)", check=POSITIVE)

    @property
    def arch(self) -> Architecture:
        return architecture(self.target)


def compile_and_cost(model: nn.Module, settings: EdgeSettings, calibration: Subset) -> tuple[CompiledNet, NetworkCost]:
    """Compile ``model`` for the device and cost it; `ModelError` if the device cannot hold or run it."""
    inputs = torch.stack([calibration[i][0] for i in range(len(calibration))])
    loader = DataLoader(calibration, batch_size=32, shuffle=False) if settings.qat_epochs > 0 else None
    compiled = compile_model(model, inputs, act_bits=settings.act_bits, gamma=settings.gamma, head=settings.head,
                             finetune_loader=loader, finetune_epochs=settings.qat_epochs)
    cost = network_cost(compiled.layers, settings.act_bits, settings.arch, settings.format, settings.objective)
    if cost.model_bytes > settings.arch.onchip_bytes:
        raise ModelError(f"the compiled model needs {cost.model_bytes} bytes, more than the {settings.target}'s "
                         f"{settings.arch.onchip_bytes} bytes of on-chip memory")
    return compiled, cost


def edge_metrics(compiled: CompiledNet, cost: NetworkCost, test: DataLoader) -> dict[str, float]:
    """The f4_* metrics of one evaluation: accuracy on ``test``, and per-inference latency, energy and model size."""
    return {"f4_accuracy": compiled.accuracy(test), "f4_latency_us": cost.latency_s * 1e6,
            "f4_energy_uj": cost.energy_j * 1e6, "f4_model_bytes": cost.model_bytes}


class EdgeEvaluator:
    """An emulated FantastIC4 client holding a test split and a few training examples."""

    def __init__(self, settings: EdgeSettings, calibration: Subset, test: DataLoader) -> None:
        self.settings, self.calibration, self.test = settings, calibration, test

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "EdgeEvaluator | None":
        """The run's edge client, or None when ``edge.fantastic4`` is off."""
        if not config["edge.fantastic4"]:
            return None
        from fedcomp.run.experiment import eval_loader, run_dataset

        settings = build(EdgeSettings, config)
        train = run_dataset(config).train
        calibration = Subset(train, list(range(min(settings.calibration, len(train)))))
        return cls(settings, calibration, eval_loader(config))

    def check(self, model: nn.Module) -> None:
        """Compile ``model`` once; raises `ModelError` (one message) if the device cannot run it."""
        compile_and_cost(model, self.settings, self.calibration)

    def due(self, server_round: int, num_rounds: int) -> bool:
        """Whether round ``server_round`` is evaluated: every ``edge.every`` rounds, and the last."""
        return server_round > 0 and (server_round % self.settings.every == 0 or server_round == num_rounds)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The f4_* metrics of ``model`` on the device."""
        return edge_metrics(*compile_and_cost(model, self.settings, self.calibration), self.test)


def preflight(config: Mapping[str, Any], model: nn.Module) -> None:
    """Start-up check of a run's edge client (nothing when it is off)."""
    evaluator = EdgeEvaluator.from_config(config)
    if evaluator is not None:
        evaluator.check(model)


def layer_table(cost: NetworkCost) -> str:
    """A per-layer table (format, non-zeros, ops, cycles, energy, bytes) with the totals, as markdown."""
    lines = ["| layer | shape | format | non-zeros | adds | muls | read bits | cycles | energy (nJ) | bytes |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for layer in cost.layers:
        lines.append(f"| {layer.name} | {layer.shape[0]}x{layer.shape[1]} | {layer.format} | {layer.nnz} | "
                     f"{layer.ops.adds} | {layer.ops.muls} | {layer.ops.read_bits} | {layer.cycles} | "
                     f"{layer.energy_j * 1e9:.3f} | {layer.storage_bits / 8:.0f} |")
    total_nnz = sum(layer.nnz for layer in cost.layers)
    adds = sum(layer.ops.adds for layer in cost.layers)
    muls = sum(layer.ops.muls for layer in cost.layers)
    reads = sum(layer.ops.read_bits for layer in cost.layers)
    lines.append(f"| **total** | | | {total_nnz} | {adds} | {muls} | {reads} | {cost.cycles} | "
                 f"{cost.energy_j * 1e9:.3f} | {cost.model_bytes} |")
    return "\n".join(lines)


def summary_line(cost: NetworkCost) -> str:
    return (f"{cost.arch.name}: latency {cost.latency_s * 1e6:.3f} us, energy {cost.energy_j * 1e6:.4f} uJ, "
            f"{cost.tops:.3f} TOPS (dense-equivalent), {cost.watts:.3f} W, {cost.tops_per_w:.2f} TOPS/W, "
            f"model {cost.model_bytes} bytes")
