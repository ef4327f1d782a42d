"""Wire format version 1 pinned: committed payloads of every codec and quantization kind.

The bytes in tests/golden/ were written by tests/golden/make_golden.py. Decoding them must
give exactly the committed tensors, and encoding those tensors must give exactly the
committed bytes. A change to how version 1 codes its bytes fails here and must bump
``fedcomp.compress.codec.wire.VERSION`` (then regenerate the files under the new version's name).
"""

from pathlib import Path

import numpy as np
import pytest

from fedcomp.compress.codec import decode_payload, encode_payload, get_codec
from fedcomp.compress.codec.deepcabac import available as deepcabac_available
from fedcomp.compress.codec.wire import VERSION
from fedcomp.compress.quant import QuantizedTensor, QuantKind
from golden.make_golden import MANIFEST  # the manifest the golden files were written for

GOLDEN = Path(__file__).resolve().parent / "golden"
CODECS = ["ans", "raw", "float32", pytest.param("deepcabac", marks=pytest.mark.skipif(
    not deepcabac_available(), reason="nncodec is not installed (the deepcabac extra)"))]


def committed_tensors() -> list[QuantizedTensor]:
    with np.load(GOLDEN / "wire_v1_tensors.npz", allow_pickle=False) as table:
        out = []
        for spec in MANIFEST.tensors:
            kind = QuantKind(int(table[f"{spec.name}/kind"]))
            params = tuple(table[f"{spec.name}/params"].tolist())
            params = tuple(int(p) for p in params) if kind in (QuantKind.UNIFORM_QP, QuantKind.CODEBOOK) else params
            codebook = table[f"{spec.name}/codebook"] if f"{spec.name}/codebook" in table.files else None
            out.append(QuantizedTensor(spec.name, table[f"{spec.name}/symbols"], kind, params, codebook))
    return out


def test_the_golden_files_are_this_format_version():
    assert VERSION == 1, "a new format version needs its own golden files (tests/golden/make_golden.py)"
    assert {p.name for p in GOLDEN.glob("wire_v1_*.bin")} == {f"wire_v1_{c}.bin" for c in
                                                              ("ans", "raw", "float32", "deepcabac")}


@pytest.mark.parametrize("codec", CODECS)
def test_committed_payload_decodes_to_the_committed_tensors(codec):
    payload = decode_payload((GOLDEN / f"wire_v1_{codec}.bin").read_bytes(), MANIFEST)
    assert payload.codec == codec and payload.flags == 0
    kinds = set()
    for got, want in zip(payload.tensors, committed_tensors(), strict=True):
        assert got.name == want.name and got.kind == want.kind
        np.testing.assert_array_equal(got.symbols, want.symbols)
        assert np.array_equal(got.dequantize().view(np.int32), want.dequantize().view(np.int32))
        kinds.add(got.kind)
    assert kinds == set(QuantKind)  # every kind is pinned


@pytest.mark.parametrize("codec", CODECS)
def test_the_committed_tensors_encode_to_the_committed_bytes(codec):
    assert encode_payload(committed_tensors(), MANIFEST, get_codec(codec)) == \
        (GOLDEN / f"wire_v1_{codec}.bin").read_bytes()
