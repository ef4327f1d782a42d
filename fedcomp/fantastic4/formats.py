"""Compact representations of a 4-bit weight matrix: dense, CSR, CER and CSER.

Every format stores an integer matrix ``W`` (``m`` rows = output neurons, ``n`` columns =
inputs) whose entries are grid indices ``k`` (the weight is ``k * step``). Each one knows
its exact storage in bits and the exact operations one inference through it costs on the
FantastIC4 datapath (DESIGN 4.9), and round-trips to the dense matrix.

The datapath, the same for every format: for each row, each input is added into the
accumulator of its weight's value (the *group sum*); then each non-empty group sum is
multiplied by its small integer value ``k`` and added to the row result, which starts at
the bias. The value products need no multiplier: ``|k| <= 8`` is a shift plus at most one
add or subtract (canonical signed digits), counted in ``shift_adds``. What differs between
formats is what has to be read to know which input goes into which group:

- dense: every 4-bit code, every input (zero codes feed a discarded accumulator);
- CSR: per non-zero a 4-bit code and a column index, plus row pointers;
- CER (Wiedemann et al., IEEE TNNLS 2020): a codebook of the non-zero values ordered by
  frequency; per row, the column indices grouped by codebook position, each group closed
  by a pointer, empty groups kept up to the row's last used position;
- CSER: like CER, but only non-empty groups, each with an explicit codebook index.

Bit widths of indices and pointers are the smallest that address what they point into:
``ceil(log2(count))`` for an index into ``count`` things, ``ceil(log2(count + 1))`` for an
offset in ``0..count``; at least 1 bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

WEIGHT_BITS = 4  # FantastIC4 runs 4-bit layers: 16 grid levels per layer


def index_bits(count: int) -> int:
    """Bits of an index into ``count`` things (at least 1)."""
    return max(1, int(count - 1).bit_length())


def offset_bits(count: int) -> int:
    """Bits of an offset in ``0..count`` (at least 1)."""
    return max(1, int(count).bit_length())


def shift_add_cost(k: np.ndarray) -> np.ndarray:
    """Adds needed to multiply by each integer ``k`` with shifts and adds (canonical signed digits).

    The number of non-zero CSD digits of ``|k|`` minus one: 1, 2, 4, 8 cost 0; 3, 5, 6, 7 cost 1.
    """
    k = np.abs(np.asarray(k, dtype=np.int64))
    x = k.copy()
    digits = np.zeros_like(k)
    while np.any(x):
        odd = (x & 1) == 1
        # CSD: a run of ones ending here (x % 4 == 3) becomes -1 and a carry
        digit = np.where(odd, np.where((x & 3) == 3, -1, 1), 0)
        digits += odd
        x = (x - digit) >> 1
    return np.maximum(digits - 1, 0)


def codebook_positions(codebook: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position in ``codebook`` of each of ``values`` (all of which must be in it)."""
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    low = int(codebook.min())
    lookup = np.zeros(int(codebook.max()) - low + 1, dtype=np.int64)
    lookup[codebook - low] = np.arange(len(codebook))
    return lookup[values - low]


def _scatter_groups(shape: tuple[int, int], group_rows: np.ndarray, group_values: np.ndarray,
                    omega_ptr: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Dense matrix from groups given by their rows, values and column ranges."""
    sizes = np.diff(omega_ptr)
    dense = np.zeros(shape, dtype=np.int64)
    dense[np.repeat(group_rows, sizes), cols] = np.repeat(group_values, sizes)
    return dense


@dataclass
class OpCounts:
    """Operations and memory traffic of one inference through one layer (or a sum of layers).

    ``reads`` and ``writes`` are bits by kind (``weights``, ``indices``, ``pointers``,
    ``codebook``, ``activations``, ``bias``, ``requant``).
    """

    adds: int = 0  # input accumulations, value shift-adds and product accumulations
    shift_adds: int = 0  # the part of ``adds`` spent multiplying group sums by their values
    value_products: int = 0  # group sum x value products (non-empty groups)
    muls: int = 0  # full multiplier operations (requantization)
    reads: dict[str, int] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)

    @property
    def read_bits(self) -> int:
        return sum(self.reads.values())

    @property
    def write_bits(self) -> int:
        return sum(self.writes.values())

    def __add__(self, other: "OpCounts") -> "OpCounts":
        def merged(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}

        return OpCounts(self.adds + other.adds, self.shift_adds + other.shift_adds,
                        self.value_products + other.value_products, self.muls + other.muls,
                        merged(self.reads, other.reads), merged(self.writes, other.writes))


@dataclass(frozen=True)
class Groups:
    """A matrix's non-zeros grouped by (row, value): the structure every format and the engine share.

    ``cols`` lists the column of every non-zero, ordered by row, then by the value's codebook
    position, then by column; group ``g`` covers ``cols[starts[g]:starts[g + 1]]``, lies in
    row ``rows[g]`` and carries value ``values[g]``.
    """

    shape: tuple[int, int]
    cols: np.ndarray
    starts: np.ndarray  # len G + 1
    rows: np.ndarray  # len G
    values: np.ndarray  # len G
    codebook: np.ndarray  # the distinct non-zero values, most frequent first (ties: smaller value first)

    @classmethod
    def of(cls, matrix: np.ndarray) -> "Groups":
        w = np.asarray(matrix)
        if w.ndim != 2 or not np.issubdtype(w.dtype, np.integer):
            raise ValueError(f"expected a 2-D integer matrix, got {w.dtype} of shape {w.shape}")
        rows, cols = np.nonzero(w)
        vals = w[rows, cols].astype(np.int64)
        distinct, counts = np.unique(vals, return_counts=True)
        codebook = distinct[np.lexsort((distinct, -counts))]
        rank = codebook_positions(codebook, vals)
        order = np.lexsort((cols, rank, rows))
        rows, cols, vals, rank = rows[order], cols[order], vals[order], rank[order]
        new = np.ones(len(rows), dtype=bool)
        new[1:] = (rows[1:] != rows[:-1]) | (rank[1:] != rank[:-1])
        starts = np.append(np.flatnonzero(new), len(rows))
        return cls((int(w.shape[0]), int(w.shape[1])), cols.astype(np.int64), starts.astype(np.int64),
                   rows[new].astype(np.int64), vals[new], codebook.astype(np.int64))

    @property
    def nnz(self) -> int:
        return len(self.cols)

    @property
    def num_groups(self) -> int:
        return len(self.rows)

    def ranks(self) -> np.ndarray:
        """Codebook position of every group's value."""
        return codebook_positions(self.codebook, self.values)

    def to_dense(self) -> np.ndarray:
        return _scatter_groups(self.shape, self.rows, self.values, self.starts, self.cols)

    def datapath_ops(self) -> OpCounts:
        """The part every format shares: value products and their accumulation into the row."""
        shift = int(shift_add_cost(self.values).sum())
        return OpCounts(adds=shift + self.num_groups, shift_adds=shift, value_products=self.num_groups)


@dataclass(frozen=True)
class CompactFormat:
    """A stored matrix: named arrays, each with its bit width, plus the grouping it encodes."""

    name: ClassVar[str]
    groups: Groups
    arrays: dict[str, tuple[np.ndarray, int]]  # name -> (entries, bits per entry)

    @property
    def shape(self) -> tuple[int, int]:
        return self.groups.shape

    def storage_bits(self) -> int:
        """Exact size of the stored arrays in bits."""
        return sum(len(entries) * bits for entries, bits in self.arrays.values())

    def op_counts(self, act_bits: int) -> OpCounts:
        """Operations and reads of one inference through this matrix (no bias, no requantization).

        Each input read is added into a group sum; the rest is the shared datapath.
        """
        ops = self.groups.datapath_ops()
        inputs = self.inputs_read()
        ops.adds += inputs
        ops.reads = {**self.structure_reads(), "activations": inputs * act_bits}
        return ops

    def inputs_read(self) -> int:
        """Inputs read (and added into a group sum) per inference: one per non-zero in the sparse formats."""
        return self.groups.nnz

    def structure_reads(self) -> dict[str, int]:
        """Bits read per inference to learn which input goes into which group, by kind."""
        raise NotImplementedError

    def to_dense(self) -> np.ndarray:
        """The integer matrix, decoded from the stored arrays alone."""
        raise NotImplementedError

    def _bits(self, name: str) -> int:
        entries, bits = self.arrays[name]
        return len(entries) * bits


def _codebook_array(groups: Groups) -> tuple[np.ndarray, int]:
    return groups.codebook, WEIGHT_BITS


class Dense(CompactFormat):
    name = "dense"

    @classmethod
    def encode(cls, groups: Groups) -> "Dense":
        return cls(groups, {"codes": (groups.to_dense().ravel(), WEIGHT_BITS)})

    def inputs_read(self) -> int:
        return self.shape[0] * self.shape[1]

    def structure_reads(self) -> dict[str, int]:
        return {"weights": self._bits("codes")}

    def to_dense(self) -> np.ndarray:
        return self.arrays["codes"][0].reshape(self.shape).astype(np.int64)


class CSR(CompactFormat):
    name = "csr"

    @classmethod
    def encode(cls, groups: Groups) -> "CSR":
        m, n = groups.shape
        dense = groups.to_dense()
        rows, cols = np.nonzero(dense)
        row_ptr = np.searchsorted(rows, np.arange(m + 1))
        return cls(groups, {"values": (dense[rows, cols], WEIGHT_BITS), "col_index": (cols, index_bits(n)),
                            "row_ptr": (row_ptr, offset_bits(len(cols)))})

    def structure_reads(self) -> dict[str, int]:
        return {"weights": self._bits("values"), "indices": self._bits("col_index"), "pointers": self._bits("row_ptr")}

    def to_dense(self) -> np.ndarray:
        values, cols, ptr = (self.arrays[k][0] for k in ("values", "col_index", "row_ptr"))
        dense = np.zeros(self.shape, dtype=np.int64)
        dense[np.repeat(np.arange(self.shape[0]), np.diff(ptr)), cols] = values
        return dense


class CER(CompactFormat):
    """Per row, groups for codebook positions 0..L_r-1 (empty ones kept); the position is implicit."""

    name = "cer"

    @classmethod
    def encode(cls, groups: Groups) -> "CER":
        m, n = groups.shape
        ranks = groups.ranks()
        row_len = np.zeros(m, dtype=np.int64)  # L_r: groups stored for row r
        np.maximum.at(row_len, groups.rows, ranks + 1)
        first = np.concatenate([[0], np.cumsum(row_len)])  # row r's groups are first[r]:first[r+1]
        sizes = np.zeros(first[-1], dtype=np.int64)
        sizes[first[groups.rows] + ranks] = np.diff(groups.starts)
        omega_ptr = np.concatenate([[0], np.cumsum(sizes)])
        return cls(groups, {"codebook": _codebook_array(groups), "col_index": (groups.cols, index_bits(n)),
                            "omega_ptr": (omega_ptr, offset_bits(groups.nnz)),
                            "row_ptr": (first, offset_bits(first[-1]))})

    def structure_reads(self) -> dict[str, int]:
        return {"indices": self._bits("col_index"), "pointers": self._bits("omega_ptr") + self._bits("row_ptr"),
                "codebook": self.groups.num_groups * WEIGHT_BITS}

    def to_dense(self) -> np.ndarray:
        codebook, cols, omega_ptr, row_ptr = (self.arrays[k][0] for k in ("codebook", "col_index", "omega_ptr",
                                                                          "row_ptr"))
        group_rows = np.repeat(np.arange(self.shape[0]), np.diff(row_ptr))
        position = np.arange(len(group_rows)) - row_ptr[group_rows]  # implicit: the group's place in its row
        return _scatter_groups(self.shape, group_rows, codebook[position], omega_ptr, cols)


class CSER(CompactFormat):
    """Per row, only the non-empty groups, each with an explicit codebook index."""

    name = "cser"

    @classmethod
    def encode(cls, groups: Groups) -> "CSER":
        m, n = groups.shape
        row_ptr = np.searchsorted(groups.rows, np.arange(m + 1))
        return cls(groups, {"codebook": _codebook_array(groups), "col_index": (groups.cols, index_bits(n)),
                            "omega_index": (groups.ranks(), index_bits(max(len(groups.codebook), 1))),
                            "omega_ptr": (groups.starts, offset_bits(groups.nnz)),
                            "row_ptr": (row_ptr, offset_bits(groups.num_groups))})

    def structure_reads(self) -> dict[str, int]:
        return {"indices": self._bits("col_index") + self._bits("omega_index"),
                "pointers": self._bits("omega_ptr") + self._bits("row_ptr"),
                "codebook": self.groups.num_groups * WEIGHT_BITS}

    def to_dense(self) -> np.ndarray:
        codebook, cols, omega_index, omega_ptr, row_ptr = (
            self.arrays[k][0] for k in ("codebook", "col_index", "omega_index", "omega_ptr", "row_ptr"))
        group_rows = np.repeat(np.arange(self.shape[0]), np.diff(row_ptr))
        return _scatter_groups(self.shape, group_rows, codebook[omega_index], omega_ptr, cols)


FORMATS: dict[str, Callable[[Groups], CompactFormat]] = {
    fmt.name: fmt.encode for fmt in (Dense, CSR, CER, CSER)
}


def encode(name: str, matrix_or_groups: np.ndarray | Groups) -> CompactFormat:
    """Store an integer matrix (or its `Groups`) in format ``name``."""
    if name not in FORMATS:
        raise ValueError(f"unknown compact format {name!r}; choose one of {', '.join(FORMATS)}")
    groups = matrix_or_groups if isinstance(matrix_or_groups, Groups) else Groups.of(matrix_or_groups)
    return FORMATS[name](groups)
