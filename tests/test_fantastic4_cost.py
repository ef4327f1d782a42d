"""FantastIC4 cost model against independent figures: the paper's headline numbers, and a tiny layer
whose operations, cycles, energy and storage are counted by hand below.

The hand case: ``W = [[3, 0, 3, 0], [0, 0, 0, 1]]`` (2 outputs, 4 inputs, 3 non-zeros, one group
per row), 8-bit activations, requantized, on a toy architecture (2 adders, 4 multipliers, 16
memory bits per cycle, 1 GHz, 0.25 / 0.5 pJ per bit read / written, energy scale 2, 1 mW static).
"""

import numpy as np
import pytest

from fedcomp.fantastic4.cost import (PROFILES, UNCALIBRATED, Architecture, calibrate_fpga, cheapest, cycles_of,
                                     layer_cost, network_cost, reference_cost)
from fedcomp.fantastic4.engine import IntLayer
from fedcomp.fantastic4.formats import FORMATS, Groups, OpCounts

# the abstract of Wiedemann et al. (/work/shared/seed-abstracts.txt): 2.45 TOPS at 3.6 W on an XCVU440
# FPGA, 20.17 TOPS/W on a 22 nm ASIC
PAPER_FPGA_TOPS, PAPER_FPGA_WATTS, PAPER_ASIC_TOPS_PER_W = 2.45, 3.6, 20.17

W = np.array([[3, 0, 3, 0], [0, 0, 0, 1]])
TOY = Architecture("toy", multipliers=4, adders=2, clock_hz=1e9, mem_bits_per_cycle=16, onchip_bytes=1024,
                   acc_bits=32, requant_bits=24, pj_add=0.1, pj_mul=3.1, pj_read_bit=0.25, pj_write_bit=0.5,
                   energy_scale=2.0, static_w=1e-3)


def test_fpga_profile_reaches_the_papers_2_45_tops_at_3_6_watts():
    ref = reference_cost(PROFILES["fpga"])
    assert ref.tops == pytest.approx(PAPER_FPGA_TOPS, rel=0.01)
    assert ref.watts == pytest.approx(PAPER_FPGA_WATTS, rel=0.01)


def test_asic_profile_reaches_the_papers_20_17_tops_per_watt():
    assert reference_cost(PROFILES["asic"]).tops_per_w == pytest.approx(PAPER_ASIC_TOPS_PER_W, rel=0.01)


def test_calibration_follows_its_targets():
    fpga = calibrate_fpga(UNCALIBRATED["fpga"], tops=4.9, watts=7.2)
    ref = reference_cost(fpga)
    assert ref.tops == pytest.approx(4.9) and ref.watts == pytest.approx(7.2)
    assert fpga.clock_hz == pytest.approx(2 * PROFILES["fpga"].clock_hz)  # twice the throughput, twice the clock


def test_cycles_are_bound_by_the_busiest_unit():
    assert cycles_of(OpCounts(adds=6), TOY) == 3  # 2 adders
    assert cycles_of(OpCounts(adds=1, muls=40), TOY) == 10  # 4 multipliers
    assert cycles_of(OpCounts(reads={"x": 81}), TOY) == 6  # 16 bits a cycle, rounded up
    assert cycles_of(OpCounts(), TOY) == 1


def test_a_tiny_csr_layer_costs_what_is_counted_by_hand():
    cost = layer_cost("l", FORMATS["csr"](Groups.of(W)), 8, TOY, requantized=True)
    ops = cost.ops
    # adds: 3 inputs into group sums + 2 groups into the rows + 1 shift-add for the value 3 (1 costs none)
    assert (ops.adds, ops.shift_adds, ops.value_products, ops.muls) == (6, 1, 2, 2)  # muls: 1 requantization/row
    # reads: 3 codes x 4 bits, 3 column indices x 2 bits, 3 row pointers x 2 bits, 3 inputs x 8 bits,
    # 2 biases x 32 bits, the 24-bit requantization constants; writes: 2 outputs x 8 bits
    assert ops.reads == {"weights": 12, "indices": 6, "pointers": 6, "activations": 24, "bias": 64, "requant": 24}
    assert ops.writes == {"activations": 16}
    assert cost.cycles == 10  # memory bound: (136 + 16) bits / 16 per cycle = 9.5
    # 2 x (6 x 0.1 + 2 x 3.1 + 136 x 0.25 + 16 x 0.5) pJ + 1 mW x 10 ns
    assert cost.energy_j == pytest.approx(2 * 48.8e-12 + 1e-3 * 10e-9)
    assert cost.storage_bits == 24 + 64 + 24  # CSR arrays, biases, requantization constants
    assert cost.nnz == 3 and cost.dense_ops == 16


@pytest.mark.parametrize("fmt,bits", [("dense", 32), ("csr", 24), ("cer", 28), ("cser", 28)])
def test_the_tiny_layers_storage_in_every_format(fmt, bits):
    # dense: 8 codes x 4; CER: codebook 2 x 4, 3 columns x 2, omega_ptr 4 x 2 (row 1 keeps the empty group of
    # the more frequent value 3), row_ptr 3 x 2; CSER: codebook 8, columns 6, 2 codebook indices x 1,
    # omega_ptr 3 x 2, row_ptr 3 x 2
    assert FORMATS[fmt](Groups.of(W)).storage_bits() == bits


def test_cheapest_picks_the_smallest_format_of_the_tiny_layer():
    assert cheapest("l", Groups.of(W), 8, TOY, True, "bytes").format == "csr"  # 24 bits against 28 and 32


def test_sparse_layers_prefer_a_sparse_format_and_dense_ones_dense():
    rng = np.random.default_rng(3)
    sparse = rng.integers(1, 3, size=(64, 256)) * (rng.random((64, 256)) < 0.03)
    full = rng.integers(-8, 8, size=(64, 256))
    arch = PROFILES["asic"]
    assert cheapest("s", Groups.of(sparse), 8, arch, True, "bytes").format != "dense"
    assert cheapest("d", Groups.of(full), 8, arch, True, "bytes").format == "dense"


def test_a_network_of_two_tiny_layers_and_unknown_formats():
    layers = [IntLayer(f"fc{i}", W.astype(np.int8), np.zeros(2, np.int64), 3, 4, 0, 255, 255) for i in range(2)]
    cost = network_cost(layers, 8, TOY, "csr")
    assert [layer.format for layer in cost.layers] == ["csr", "csr"]
    assert cost.cycles == 20 and cost.latency_s == pytest.approx(20e-9)
    assert cost.dense_ops == 32 and cost.tops == pytest.approx(32 / 20e-9 / 1e12)
    assert cost.model_bytes == 2 * 112 // 8
    with pytest.raises(ValueError, match="unknown compact format"):
        network_cost(layers, 8, TOY, "coo")
