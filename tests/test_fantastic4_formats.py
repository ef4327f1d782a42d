"""FantastIC4 compact formats: round trips, exact storage and operation counts (hand-counted)."""

import zlib

import numpy as np
import pytest

from fedcomp.fantastic4.formats import FORMATS, Groups, encode, shift_add_cost

SHAPES = [(1, 1), (3, 4), (7, 1), (1, 9), (33, 17), (64, 64), (10, 250)]
DENSITIES = [0.0, 0.05, 0.3, 0.9, 1.0]


def random_4bit(rng, shape, density):
    w = rng.integers(-8, 8, size=shape)
    w[rng.random(shape) >= density] = 0
    return w


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_every_format_round_trips_to_the_dense_matrix(name, shape, density):
    rng = np.random.default_rng(zlib.crc32(repr((name, shape, density)).encode()))
    w = random_4bit(rng, shape, density)
    fmt = encode(name, w)
    assert np.array_equal(fmt.to_dense(), w)
    assert fmt.to_dense().shape == shape


def test_groups_order_values_by_frequency_and_cover_every_nonzero():
    w = np.array([[0, 3, 0, 3, -2], [1, 0, -2, 0, 3], [0, 0, 0, 0, 0]])
    g = Groups.of(w)
    assert list(g.codebook) == [3, -2, 1]  # 3 three times, -2 twice, 1 once
    assert list(g.rows) == [0, 0, 1, 1, 1] and list(g.values) == [3, -2, 3, -2, 1]
    assert g.nnz == 6 and np.array_equal(g.to_dense(), w)


def test_shift_add_cost_is_the_canonical_signed_digit_count_minus_one():
    assert list(shift_add_cost(np.arange(0, 9))) == [0, 0, 0, 1, 0, 1, 1, 1, 0]
    assert list(shift_add_cost(-np.arange(0, 9))) == [0, 0, 0, 1, 0, 1, 1, 1, 0]


# Hand count for W = [[0, 3, 0, 3], [1, 0, 0, 0], [0, 0, 0, 0]] (m=3, n=4), 8-bit activations:
# nnz 3; groups (row 0, value 3: cols 1, 3) and (row 1, value 1: col 0); codebook [3, 1].
# Datapath, every format: 2 value products, 3 -> 1 shift-add (3 = 4 - 1), 1 -> 0; 2 product
# accumulations. Column index 2 bits (4 columns); offsets into 3 non-zeros 2 bits.
HAND = np.array([[0, 3, 0, 3], [1, 0, 0, 0], [0, 0, 0, 0]])
EXPECTED = {
    # dense: all 12 codes (48 bits) and 12 activations read, 12 input adds + 1 + 2
    "dense": dict(storage=48, adds=15, reads={"weights": 48, "activations": 96}),
    # CSR: values 3x4, columns 3x2, row_ptr [0,2,3,3] 4x2; 3 input adds + 3
    "csr": dict(storage=12 + 6 + 8, adds=6, reads={"weights": 12, "indices": 6, "pointers": 8, "activations": 24}),
    # CER: codebook 2x4; columns 3x2; row 0 keeps 1 group, row 1 keeps 2 (the empty one for 3,
    # then 1), row 2 none: omega_ptr [0,2,2,3] 4x2, row_ptr [0,1,3,3] 4x2; codebook read per
    # non-empty group 2x4
    "cer": dict(storage=8 + 6 + 8 + 8, adds=6,
                reads={"indices": 6, "pointers": 16, "codebook": 8, "activations": 24}),
    # CSER: codebook 2x4; columns 3x2; omega_index 2 groups x 1 bit; omega_ptr [0,2,3] 3x2;
    # row_ptr [0,1,2,2] 4 x 2 bits (offsets into 2 groups)
    "cser": dict(storage=8 + 6 + 2 + 6 + 8, adds=6,
                 reads={"indices": 6 + 2, "pointers": 6 + 8, "codebook": 8, "activations": 24}),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_op_counts_and_storage_match_a_hand_count(name):
    fmt = encode(name, HAND)
    ops = fmt.op_counts(act_bits=8)
    expected = EXPECTED[name]
    assert fmt.storage_bits() == expected["storage"]
    assert ops.adds == expected["adds"]
    assert ops.shift_adds == 1 and ops.value_products == 2 and ops.muls == 0
    assert {k: v for k, v in ops.reads.items() if v} == expected["reads"]


def test_cer_keeps_empty_groups_that_cser_drops():
    w = np.zeros((2, 6), dtype=np.int64)
    w[0, :5] = 2  # 2 is the most frequent value
    w[1, 0] = -5  # row 1 uses only the second codebook entry
    cer, cser = encode("cer", w), encode("cser", w)
    assert len(cer.arrays["omega_ptr"][0]) - 1 == 3  # row 0: [2]; row 1: [2 (empty), -5]
    assert len(cser.arrays["omega_ptr"][0]) - 1 == 2


def test_sparser_matrices_cost_fewer_adds_in_sparse_formats_but_not_in_dense():
    rng = np.random.default_rng(0)
    sparse, dense_w = random_4bit(rng, (64, 64), 0.1), random_4bit(rng, (64, 64), 0.9)
    for name in ("csr", "cer", "cser"):
        assert encode(name, sparse).op_counts(8).adds < encode(name, dense_w).op_counts(8).adds
    dense_reads = [encode("dense", w).op_counts(8).reads["weights"] for w in (sparse, dense_w)]
    assert dense_reads[0] == dense_reads[1]


def test_unknown_format_and_non_integer_matrix_are_rejected():
    with pytest.raises(ValueError, match="unknown compact format"):
        encode("coo", HAND)
    with pytest.raises(ValueError, match="integer matrix"):
        Groups.of(np.ones((2, 2)))
