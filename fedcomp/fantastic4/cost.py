"""The FantastIC4 cost model: cycles, latency, throughput, energy and memory from operation counts.

The paper's body was not available to us, only its abstract (DESIGN 4.9). The architecture
is therefore a set of parameters, and each parameter is one of three kinds, marked where
it is defined:

- FROM THE ABSTRACT: 4 multipliers, 4-bit weights, the two headline figures;
- CALIBRATED: solved so that a reference configuration reproduces a headline figure;
- ASSUMPTION: our choice, not given by the abstract. Change them and re-calibrate
  (`calibrate_fpga`, `calibrate_asic`).

The model. Per layer, the adders (processing elements) do all additions, the multipliers do
the requantization multiplies, and the on-chip memory delivers ``mem_bits_per_cycle``; the
three run concurrently, so the layer takes ``max(adds / adders, muls / multipliers,
(read + written bits) / mem_bits_per_cycle)`` cycles (rounded up). Layers run one after
another; there is no pipeline fill/drain overhead (ASSUMPTION). Energy is
``energy_scale * (adds * pj_add + muls * pj_mul + bits read * pj_read_bit + bits written *
pj_write_bit)`` plus ``static_w * latency``. Throughput counts, as accelerator papers
usually do, the dense-equivalent operations: 2 per weight of the uncompressed layer (one
multiply, one add) per inference (ASSUMPTION about the paper's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from fedcomp.fantastic4.engine import IntLayer
from fedcomp.fantastic4.formats import FORMATS, CompactFormat, Groups, OpCounts

PJ = 1e-12


@dataclass(frozen=True)
class Architecture:
    """The parameters of one FantastIC4 implementation (see the module docstring for their kinds)."""

    name: str
    multipliers: int  # FROM THE ABSTRACT: 4
    adders: int  # ASSUMPTION
    clock_hz: float  # FPGA: CALIBRATED; ASIC: ASSUMPTION
    mem_bits_per_cycle: int  # ASSUMPTION: on-chip memory read+write bandwidth
    onchip_bytes: int  # weight memory; FPGA: the XCVU440's block RAM (datasheet), ASIC: ASSUMPTION
    acc_bits: int = 32  # ASSUMPTION: accumulator and bias width
    requant_bits: int = 24  # ASSUMPTION: a layer's requantization multiplier (16) and shift (8)
    # Relative energies per event: ASSUMPTION, Horowitz (ISSCC 2014, 45 nm): 32-bit add 0.1 pJ,
    # 32-bit multiply 3.1 pJ, 8 KB SRAM 64-bit access 10 pJ (0.156 pJ per bit, read or write).
    pj_add: float = 0.1
    pj_mul: float = 3.1
    pj_read_bit: float = 10 / 64
    pj_write_bit: float = 10 / 64
    energy_scale: float = 1.0  # CALIBRATED: technology factor on the relative energies
    static_w: float = 0.0  # ASSUMPTION: static power


# The reference configuration both calibrations use (ASSUMPTIONS): an MLP the size of a
# Google Speech Commands keyword-spotting network (49 frames x 10 MFCC inputs, three hidden
# layers of 512, 12 classes), 4-bit weights with 90% zeros and non-zero grid indices k drawn
# with probability proportional to 2**-|k|, 8-bit activations, every layer stored as CER.
REFERENCE_LAYERS = (490, 512, 512, 512, 12)
REFERENCE_ZERO_FRACTION = 0.9
REFERENCE_FORMAT = "cer"
REFERENCE_ACT_BITS = 8
REFERENCE_SEED = 2020

FPGA_TOPS = 2.45  # FROM THE ABSTRACT: throughput on a Virtex UltraScale XCVU440
FPGA_WATTS = 3.6  # FROM THE ABSTRACT: total power of that implementation
ASIC_TOPS_PER_W = 20.17  # FROM THE ABSTRACT: 22 nm ASIC power efficiency


@dataclass(frozen=True)
class LayerCost:
    """One layer in its chosen format: what it costs per inference."""

    name: str
    format: str
    shape: tuple[int, int]
    nnz: int
    ops: OpCounts
    cycles: int
    energy_j: float
    storage_bits: int

    @property
    def dense_ops(self) -> int:
        return 2 * self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class NetworkCost:
    """The totals over a network's layers, for one inference."""

    layers: tuple[LayerCost, ...]
    arch: Architecture

    @property
    def cycles(self) -> int:
        return sum(layer.cycles for layer in self.layers)

    @property
    def latency_s(self) -> float:
        return self.cycles / self.arch.clock_hz

    @property
    def energy_j(self) -> float:
        return sum(layer.energy_j for layer in self.layers)

    @property
    def storage_bits(self) -> int:
        return sum(layer.storage_bits for layer in self.layers)

    @property
    def model_bytes(self) -> int:
        return math.ceil(self.storage_bits / 8)

    @property
    def dense_ops(self) -> int:
        return sum(layer.dense_ops for layer in self.layers)

    @property
    def tops(self) -> float:
        return self.dense_ops / self.latency_s / 1e12

    @property
    def watts(self) -> float:
        return self.energy_j / self.latency_s

    @property
    def tops_per_w(self) -> float:
        return self.dense_ops / self.energy_j / 1e12


def layer_ops(fmt: CompactFormat, act_bits: int, arch: Architecture, requantized: bool) -> OpCounts:
    """The format's operations plus the layer's own: bias reads, requantization, output writes."""
    m = fmt.shape[0]
    extra = OpCounts(muls=m if requantized else 0,
                     reads={"bias": m * arch.acc_bits, "requant": arch.requant_bits if requantized else 0},
                     writes={"activations": m * (act_bits if requantized else arch.acc_bits)})
    return fmt.op_counts(act_bits) + extra


def layer_storage_bits(fmt: CompactFormat, arch: Architecture, requantized: bool) -> int:
    return fmt.storage_bits() + fmt.shape[0] * arch.acc_bits + (arch.requant_bits if requantized else 0)


def dynamic_pj(ops: OpCounts, arch: Architecture) -> float:
    """Dynamic energy of ``ops`` before the technology scale, in pJ."""
    return ops.adds * arch.pj_add + ops.muls * arch.pj_mul + ops.read_bits * arch.pj_read_bit \
        + ops.write_bits * arch.pj_write_bit


def cycles_of(ops: OpCounts, arch: Architecture) -> int:
    return max(math.ceil(ops.adds / arch.adders), math.ceil(ops.muls / arch.multipliers),
               math.ceil((ops.read_bits + ops.write_bits) / arch.mem_bits_per_cycle), 1)


def layer_cost(name: str, fmt: CompactFormat, act_bits: int, arch: Architecture, requantized: bool) -> LayerCost:
    ops = layer_ops(fmt, act_bits, arch, requantized)
    cycles = cycles_of(ops, arch)
    energy = arch.energy_scale * dynamic_pj(ops, arch) * PJ + arch.static_w * cycles / arch.clock_hz
    return LayerCost(name, fmt.name, fmt.shape, fmt.groups.nnz, ops, cycles, energy,
                     layer_storage_bits(fmt, arch, requantized))


OBJECTIVES = {
    "energy": lambda cost: cost.energy_j,
    "cycles": lambda cost: cost.cycles,
    "bytes": lambda cost: cost.storage_bits,
}


def cheapest(name: str, groups: Groups, act_bits: int, arch: Architecture, requantized: bool,
             objective: str = "energy", formats: tuple[str, ...] = tuple(FORMATS)) -> LayerCost:
    """The layer in each of ``formats``; the one lowest in ``objective`` (ties: the first listed)."""
    costs = [layer_cost(name, FORMATS[f](groups), act_bits, arch, requantized) for f in formats]
    return min(costs, key=OBJECTIVES[objective])


def reference_groups() -> list[Groups]:
    """The weight matrices of the reference configuration (deterministic)."""
    rng = np.random.default_rng(REFERENCE_SEED)
    levels = np.array([k for k in range(-8, 8) if k])
    probabilities = 2.0 ** -np.abs(levels)
    probabilities /= probabilities.sum()
    out = []
    for n, m in zip(REFERENCE_LAYERS[:-1], REFERENCE_LAYERS[1:]):
        w = rng.choice(levels, size=(m, n), p=probabilities)
        w[rng.random((m, n)) < REFERENCE_ZERO_FRACTION] = 0
        out.append(Groups.of(w))
    return out


def reference_cost(arch: Architecture) -> NetworkCost:
    """The reference configuration on ``arch`` (every layer in `REFERENCE_FORMAT`)."""
    groups = reference_groups()
    layers = tuple(layer_cost(f"fc{i}", FORMATS[REFERENCE_FORMAT](g), REFERENCE_ACT_BITS, arch,
                              requantized=i < len(groups) - 1) for i, g in enumerate(groups))
    return NetworkCost(layers, arch)


def calibrate_fpga(arch: Architecture, tops: float = FPGA_TOPS, watts: float = FPGA_WATTS) -> Architecture:
    """Solve the clock (for ``tops``) and the energy scale (for ``watts``) on the reference configuration."""
    ref = reference_cost(replace(arch, energy_scale=1.0, clock_hz=1.0))  # cycles do not depend on the clock
    clock = tops * 1e12 * ref.cycles / ref.dense_ops
    latency = ref.cycles / clock
    dynamic = sum(dynamic_pj(layer.ops, arch) for layer in ref.layers) * PJ
    scale = (watts - arch.static_w) * latency / dynamic
    return replace(arch, clock_hz=clock, energy_scale=scale)


def calibrate_asic(arch: Architecture, tops_per_w: float = ASIC_TOPS_PER_W) -> Architecture:
    """Solve the energy scale so that the reference configuration reaches ``tops_per_w``."""
    ref = reference_cost(replace(arch, energy_scale=1.0))
    dynamic = sum(dynamic_pj(layer.ops, arch) for layer in ref.layers) * PJ
    energy = ref.dense_ops / (tops_per_w * 1e12)
    return replace(arch, energy_scale=(energy - arch.static_w * ref.latency_s) / dynamic)


# The two implementations before calibration: every number here is an ASSUMPTION except
# the 4 multipliers (FROM THE ABSTRACT) and the FPGA's memory (XCVU440 block RAM, 88.6 Mb,
# from Xilinx's datasheet, not from the paper). ``clock_hz=0`` on the FPGA marks it as
# solved by calibration.
UNCALIBRATED = {
    "fpga": Architecture("fpga", multipliers=4, adders=512, clock_hz=0.0, mem_bits_per_cycle=8192,
                         onchip_bytes=88_600_000 // 8, static_w=1.0),
    "asic": Architecture("asic", multipliers=4, adders=512, clock_hz=500e6, mem_bits_per_cycle=8192,
                         onchip_bytes=1 << 20, static_w=0.0),
}

# CALIBRATED values, as `calibrate_fpga` / `calibrate_asic` compute them from UNCALIBRATED on
# the reference configuration (tests/test_fantastic4_cost.py checks that they reach the paper's figures).
# The FPGA's clock comes out at 605 MHz: the reference network needs 386 cycles, bound by
# the 4 multipliers (one requantization multiply per output neuron), and 2.45 TOPS of
# dense-equivalent operations then takes that clock. That is high for an XCVU440 design
# (200-400 MHz is typical); the paper's design likely does more per cycle than this model
# (or counts operations differently), which the abstract does not let us tell.
PROFILES: dict[str, Architecture] = {
    "fpga": replace(UNCALIBRATED["fpga"], clock_hz=605.19997e6, energy_scale=5.7367656),
    "asic": replace(UNCALIBRATED["asic"], energy_scale=0.26801182),
}


def architecture(name: str) -> Architecture:
    """A calibrated implementation by name (`PROFILES`)."""
    if name not in PROFILES:
        raise ValueError(f"unknown FantastIC4 target {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def network_cost(layers: list[IntLayer], act_bits: int, arch: Architecture, fmt: str = "cheapest",
                 objective: str = "energy") -> NetworkCost:
    """A compiled network on ``arch``, every layer in ``fmt`` or, with ``"cheapest"``, in its cheapest format."""
    if fmt != "cheapest" and fmt not in FORMATS:
        raise ValueError(f"unknown compact format {fmt!r}; choose cheapest or one of {', '.join(FORMATS)}")
    formats = tuple(FORMATS) if fmt == "cheapest" else (fmt,)
    return NetworkCost(tuple(cheapest(layer.name, Groups.of(layer.weights), act_bits, arch, layer.shift is not None,
                                      objective, formats) for layer in layers), arch)
