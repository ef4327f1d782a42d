"""Write the golden payloads of wire format version 1 (run only when a format version is bumped).

One payload per codec, carrying every quantized-tensor kind, and the tensors it carries as
a plain ``.npz`` (symbols plus kind and parameters). `tests/test_golden.py` decodes the
committed bytes and re-encodes their tensors: any change to how version 1 codes its bytes
fails there and must bump ``fedcomp.compress.codec.wire.VERSION``.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from fedcomp.compress.codec import encode_payload, get_codec  # noqa: E402
from fedcomp.compress.codec.wire import VERSION  # noqa: E402
from fedcomp.compress.params import ParamManifest, TensorSpec  # noqa: E402
from fedcomp.compress.quant import QuantizedTensor, QuantKind, float32_tensor  # noqa: E402

CODECS = ("ans", "raw", "float32", "deepcabac")
MANIFEST = ParamManifest((
    TensorSpec("conv.weight", (8, 3, 3, 3)),
    TensorSpec("conv.bias", (8,)),
    TensorSpec("fc.weight", (10, 32)),
    TensorSpec("fc.bias", (10,)),
    TensorSpec("head.weight", (4, 6)),
    TensorSpec("bn.running_mean", (8,)),
))


def tensors() -> list[QuantizedTensor]:
    """Every quantization kind, sparse and dense, with a few large symbols."""
    rng = np.random.default_rng(20261128)

    def sparse(shape, limit, density=0.3):
        s = rng.integers(-limit, limit, size=shape, endpoint=True).astype(np.int32)
        s[rng.random(shape) > density] = 0
        return s

    weight = sparse((8, 3, 3, 3), 40)
    weight[0, 0, 0, 0] = 5000
    return [
        QuantizedTensor("conv.weight", weight, QuantKind.UNIFORM_QP, (-32, 2)),
        QuantizedTensor("conv.bias", sparse((8,), 20, 1.0), QuantKind.UNIFORM_STEP, (0.015625,)),
        QuantizedTensor("fc.weight", sparse((10, 32), 2), QuantKind.CODEBOOK, (-2,),
                        np.array([-0.5, -0.1, 0.0, 0.1, 0.5], dtype=np.float32)),
        QuantizedTensor("fc.bias", sparse((10,), 1, 0.5), QuantKind.TERNARY, (0.25, 0.125)),
        QuantizedTensor("head.weight", sparse((4, 6), 3), QuantKind.UNIFORM_QP, (-32, 2)),
        float32_tensor("bn.running_mean", rng.normal(size=8).astype(np.float32)),
    ]


def main() -> None:
    table = {}
    for t in tensors():
        table[f"{t.name}/symbols"] = t.symbols
        table[f"{t.name}/kind"] = np.array(int(t.kind))
        table[f"{t.name}/params"] = np.array(t.params, dtype=np.float64)
        if t.codebook is not None:
            table[f"{t.name}/codebook"] = t.codebook
    np.savez(HERE / f"wire_v{VERSION}_tensors.npz", **table)
    for codec in CODECS:
        (HERE / f"wire_v{VERSION}_{codec}.bin").write_bytes(encode_payload(tensors(), MANIFEST, get_codec(codec)))


if __name__ == "__main__":
    main()
