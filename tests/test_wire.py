import struct
import time
import zlib

import numpy as np
import pytest

from fedcomp.compress.codec import FLAG_FULL_MODEL, decode_payload, encode_payload, get_codec
from fedcomp.compress.codec.deepcabac import available as deepcabac_available
from fedcomp.errors import PayloadError
from fedcomp.compress.params import ParamManifest, TensorSpec
from fedcomp.compress.quant import QuantizedTensor, QuantKind, float32_tensor

CODECS = ["ans", "raw", "float32"] + (["deepcabac"] if deepcabac_available() else [])

MANIFEST = ParamManifest((
    TensorSpec("conv.weight", (8, 3, 3, 3)),
    TensorSpec("conv.bias", (8,)),
    TensorSpec("fc.weight", (10, 32)),
    TensorSpec("fc.bias", (10,)),
    TensorSpec("bn.running_mean", (8,)),
))


def _tensors(seed=0):
    rng = np.random.default_rng(seed)

    def sparse(shape, limit, density=0.2):
        s = rng.integers(-limit, limit, size=shape, endpoint=True).astype(np.int32)
        s[rng.random(shape) > density] = 0
        return s

    return [
        QuantizedTensor("conv.weight", sparse((8, 3, 3, 3), 20), QuantKind.UNIFORM_QP, (-32, 2)),
        QuantizedTensor("conv.bias", sparse((8,), 20), QuantKind.UNIFORM_QP, (-32, 2)),
        QuantizedTensor("fc.weight", sparse((10, 32), 2), QuantKind.CODEBOOK, (-2,),
                        np.array([-0.5, -0.1, 0.0, 0.1, 0.5], dtype=np.float32)),
        QuantizedTensor("fc.bias", sparse((10,), 1, 0.5), QuantKind.TERNARY, (0.25, 0.125)),
        float32_tensor("bn.running_mean", rng.normal(size=8).astype(np.float32)),
    ]


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_every_kind(codec):
    tensors = _tensors()
    payload = encode_payload(tensors, MANIFEST, get_codec(codec), flags=FLAG_FULL_MODEL)
    decoded = decode_payload(payload, MANIFEST)
    assert decoded.codec == codec and decoded.flags == FLAG_FULL_MODEL
    for a, b in zip(tensors, decoded.tensors):
        assert a.name == b.name and a.kind == b.kind and a.params == b.params
        assert np.array_equal(a.symbols, b.symbols)
        assert np.array_equal(a.dequantize(), b.dequantize())


def test_partial_update_any_order_and_small_header():
    ts = _tensors()
    chosen = [ts[2], ts[0]]  # order does not matter, the payload is in manifest order
    payload = encode_payload(chosen, MANIFEST, get_codec("raw"))
    decoded = decode_payload(payload, MANIFEST)
    assert [t.name for t in decoded.tensors] == ["conv.weight", "fc.weight"]
    # same qp on two tensors: the second entry is index + "repeat" = 2 bytes
    qp_pair = [ts[0], ts[1]]
    body = get_codec("ans").encode([t.symbols for t in qp_pair])
    payload = encode_payload(qp_pair, MANIFEST, get_codec("ans"))
    header = len(payload) - len(body) - 4
    assert header == 5 + 1 + (1 + 1 + 1) + (1 + 1) + 1  # fixed, count, entry, repeat, body_len


def test_encode_rejects_wrong_shape_and_flags():
    bad = QuantizedTensor("fc.bias", np.zeros(11, np.int32), QuantKind.UNIFORM_QP, (-32, 2))
    with pytest.raises(ValueError):
        encode_payload([bad], MANIFEST, get_codec("raw"))
    with pytest.raises(ValueError):
        encode_payload(_tensors()[:1], MANIFEST, get_codec("raw"), flags=0x80)


def test_decode_checks_against_the_expected_manifest():
    payload = encode_payload(_tensors(), MANIFEST, get_codec("ans"))
    smaller = ParamManifest(MANIFEST.tensors[:3])
    with pytest.raises(PayloadError, match="exceeds its limit"):
        decode_payload(payload, smaller)
    other_shapes = ParamManifest(tuple(TensorSpec(t.name, (t.size + 1,)) for t in MANIFEST.tensors))
    with pytest.raises(PayloadError):
        decode_payload(payload, other_shapes)


def _header(codec_id=3, flags=0, version=1):
    return b"FC" + bytes([version, codec_id, flags])


@pytest.mark.parametrize("raw, message", [
    (_header() + b"\x02\x01\x01\xc0\x01\x01\x01\x00", "not above the previous"),  # repeated index
    (_header() + b"\x01\x00\x0f\x00", "repeats a previous"),
    (_header() + b"\x01\x00\x0e\x00", "unknown quantization kind"),
    (_header() + b"\x01\x00\x91\x00", "reserved bit"),
    (_header() + b"\x01\x00\x12\x00", "qp density given"),
    (_header() + b"\x01\x00\x02\x00\x00\x00\x00\x00", "not positive"),
    (_header() + b"\x01\x00\x02\x00\x00\xc0\x7f\x00", "not finite"),
    (_header() + b"\x01\x00\x03\x00\x00\x00", "empty codebook"),
    (_header() + b"\x01\x00\x01\x80\x80\x80\x80\x80\x01\x00", "longer than 5 bytes"),
    (_header() + b"\x01\x00\x00\x05", "body length"),
    (_header() + b"\x01\x00\x00\x01\xaa\xbb", "lengths do not add up"),
    (_header() + b"\x06\x00", "tensor count"),
    (_header(codec_id=9) + b"\x00\x00", "unknown codec"),
    (_header(flags=2) + b"\x00\x00", "reserved payload flags"),
    (_header(version=7) + b"\x00\x00", "version"),
])
def test_malformed_headers_with_valid_crc(raw, message):
    with pytest.raises(PayloadError, match=message):
        decode_payload(_with_crc(raw), MANIFEST)


def test_symbols_outside_their_kind_are_rejected():
    bad = [QuantizedTensor("fc.bias", np.full(10, 2, np.int32), QuantKind.TERNARY, (1.0, 1.0))]
    with pytest.raises(PayloadError, match="outside -1..1"):
        decode_payload(encode_payload(bad, MANIFEST, get_codec("raw")), MANIFEST)
    book = np.zeros(3, np.float32)
    bad = [QuantizedTensor("fc.bias", np.full(10, 3, np.int32), QuantKind.CODEBOOK, (0,), book)]
    with pytest.raises(PayloadError, match="outside 0..2"):
        decode_payload(encode_payload(bad, MANIFEST, get_codec("raw")), MANIFEST)


def test_crc_and_magic_and_type():
    payload = bytearray(encode_payload(_tensors(), MANIFEST, get_codec("raw")))
    payload[-8] ^= 0x10
    with pytest.raises(PayloadError, match="CRC"):
        decode_payload(bytes(payload), MANIFEST)
    with pytest.raises(PayloadError, match="magic"):
        decode_payload(b"XX" + bytes(payload[2:]), MANIFEST)
    with pytest.raises(PayloadError, match="bytes"):
        decode_payload("not bytes", MANIFEST)  # type: ignore[arg-type]


# --- fuzzing: every outcome is PayloadError (or, behind a re-computed CRC, a valid decode)

def _decode_within_a_second(data: bytes, may_succeed: bool) -> None:
    start = time.perf_counter()
    try:
        result = decode_payload(data, MANIFEST)
    except PayloadError:
        result = None
    assert time.perf_counter() - start < 1.0
    if result is not None:
        assert may_succeed, "a corrupted payload decoded without error"
        for t in result.tensors:
            assert t.symbols.shape == MANIFEST[MANIFEST.index(t.name)].shape


def test_fuzz_random_bytes():
    rng = np.random.default_rng(1)
    for n in list(range(0, 40)) + [100, 1000, 5000]:
        for _ in range(5):
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            _decode_within_a_second(data, may_succeed=False)
            _decode_within_a_second(b"FC\x01" + data, may_succeed=False)


@pytest.mark.parametrize("codec", CODECS)
def test_fuzz_truncations_and_bit_flips(codec):
    payload = encode_payload(_tensors(3), MANIFEST, get_codec(codec))
    for cut in range(len(payload)):
        _decode_within_a_second(payload[:cut], may_succeed=False)
    rng = np.random.default_rng(2)
    for _ in range(300):
        data = bytearray(payload)
        for pos in rng.integers(0, len(data) * 8, size=rng.integers(1, 4)):
            data[pos // 8] ^= 1 << (pos % 8)
        _decode_within_a_second(bytes(data), may_succeed=False)


@pytest.mark.parametrize("codec", CODECS)
def test_fuzz_behind_the_crc(codec):
    """Corrupt the body and fix the CRC: the codec's own checks must hold the line."""
    payload = encode_payload(_tensors(4), MANIFEST, get_codec(codec))
    rng = np.random.default_rng(3)
    body = payload[:-4]
    for trial in range(400):
        data = bytearray(body)
        if trial % 3 == 0:
            data = data[: rng.integers(0, len(data))]
        elif trial % 3 == 1:
            for pos in rng.integers(0, len(data) * 8, size=rng.integers(1, 8)):
                data[pos // 8] ^= 1 << (pos % 8)
        else:
            start = rng.integers(0, len(data))
            data[start:] = rng.integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
        _decode_within_a_second(_with_crc(bytes(data)), may_succeed=True)
