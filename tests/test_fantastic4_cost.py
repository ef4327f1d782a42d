"""FantastIC4 cost model: calibration to the paper's headline figures, cycles, energy, format choice."""

from dataclasses import replace

import numpy as np
import pytest

from fedcomp.fantastic4.cost import (ASIC_TOPS_PER_W, FPGA_TOPS, FPGA_WATTS, PROFILES, UNCALIBRATED, calibrate_asic,
                                     calibrate_fpga, cheapest, cycles_of, layer_cost, network_cost, reference_cost)
from fedcomp.fantastic4.engine import IntLayer
from fedcomp.fantastic4.formats import FORMATS, Groups, OpCounts


def test_fpga_profile_reproduces_2_45_tops_at_3_6_watts():
    ref = reference_cost(PROFILES["fpga"])
    assert ref.tops == pytest.approx(FPGA_TOPS, rel=0.01)
    assert ref.watts == pytest.approx(FPGA_WATTS, rel=0.01)
    assert (FPGA_TOPS, FPGA_WATTS) == (2.45, 3.6)


def test_asic_profile_reproduces_20_17_tops_per_watt():
    ref = reference_cost(PROFILES["asic"])
    assert ref.tops_per_w == pytest.approx(ASIC_TOPS_PER_W, rel=0.01)
    assert ASIC_TOPS_PER_W == 20.17


@pytest.mark.parametrize("name,calibrate", [("fpga", calibrate_fpga), ("asic", calibrate_asic)])
def test_stored_profiles_are_what_calibration_computes(name, calibrate):
    solved = calibrate(UNCALIBRATED[name])
    stored = PROFILES[name]
    assert solved.clock_hz == pytest.approx(stored.clock_hz, rel=1e-6)
    assert solved.energy_scale == pytest.approx(stored.energy_scale, rel=1e-6)
    assert replace(solved, clock_hz=stored.clock_hz, energy_scale=stored.energy_scale) == stored


def test_calibration_follows_its_targets():
    fpga = calibrate_fpga(UNCALIBRATED["fpga"], tops=4.9, watts=7.2)
    ref = reference_cost(fpga)
    assert ref.tops == pytest.approx(4.9) and ref.watts == pytest.approx(7.2)
    assert fpga.clock_hz == pytest.approx(2 * PROFILES["fpga"].clock_hz)


def test_cycles_are_bound_by_the_busiest_unit():
    arch = PROFILES["fpga"]
    assert cycles_of(OpCounts(adds=arch.adders * 3), arch) == 3
    assert cycles_of(OpCounts(adds=1, muls=4 * 10), arch) == 10  # 4 multipliers
    assert cycles_of(OpCounts(reads={"x": arch.mem_bits_per_cycle * 5 + 1}), arch) == 6


def test_layer_energy_is_scaled_dynamic_energy_plus_static_power_over_its_cycles():
    arch = PROFILES["fpga"]
    w = np.eye(8, dtype=np.int64) * 3
    cost = layer_cost("l", FORMATS["csr"](Groups.of(w)), 8, arch, requantized=True)
    ops = cost.ops
    dynamic = ops.adds * arch.pj_add + ops.muls * arch.pj_mul + ops.read_bits * arch.pj_read_bit \
        + ops.write_bits * arch.pj_write_bit
    assert ops.muls == 8 and ops.writes == {"activations": 64}
    assert cost.energy_j == pytest.approx(arch.energy_scale * dynamic * 1e-12 + arch.static_w * cost.cycles /
                                          arch.clock_hz)


@pytest.mark.parametrize("objective,key", [("energy", lambda c: c.energy_j), ("bytes", lambda c: c.storage_bits),
                                           ("cycles", lambda c: c.cycles)])
@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
def test_cheapest_format_is_the_minimum_over_all_formats(objective, key, density):
    rng = np.random.default_rng(int(density * 100))
    w = rng.integers(-8, 8, size=(64, 128))
    w[rng.random(w.shape) >= density] = 0
    groups = Groups.of(w)
    arch = PROFILES["asic"]
    best = cheapest("l", groups, 8, arch, True, objective)
    every = [layer_cost("l", FORMATS[f](groups), 8, arch, True) for f in FORMATS]
    assert key(best) == min(key(c) for c in every)


def test_sparse_layers_prefer_a_sparse_format_and_dense_ones_dense():
    rng = np.random.default_rng(3)
    sparse = rng.integers(1, 3, size=(64, 256)) * (rng.random((64, 256)) < 0.03)
    full = rng.integers(-8, 8, size=(64, 256))
    arch = PROFILES["asic"]
    assert cheapest("s", Groups.of(sparse), 8, arch, True, "bytes").format != "dense"
    assert cheapest("d", Groups.of(full), 8, arch, True, "bytes").format == "dense"


def test_network_cost_sums_layers_and_rejects_unknown_formats():
    rng = np.random.default_rng(0)
    layers = [IntLayer(f"fc{i}", rng.integers(-8, 8, size=(16, 16)).astype(np.int8), np.zeros(16, np.int64),
                       None, None, 0, 255, 255) for i in range(2)]
    cost = network_cost(layers, 8, PROFILES["fpga"], "cser")
    assert [layer.format for layer in cost.layers] == ["cser", "cser"]
    assert cost.cycles == sum(layer.cycles for layer in cost.layers)
    assert cost.latency_s == pytest.approx(cost.cycles / PROFILES["fpga"].clock_hz)
    assert cost.dense_ops == 2 * 2 * 16 * 16
    with pytest.raises(ValueError, match="unknown compact format"):
        network_cost(layers, 8, PROFILES["fpga"], "coo")
