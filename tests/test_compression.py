import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcomp.compress.codec.deepcabac import available as deepcabac_available
from fedcomp.compress.compression import SCHEMES, CompressionSpec, Compressor, decompress
from fedcomp.errors import ConfigError, PayloadError
from fedcomp.compress.params import ParamManifest

CODECS = ["ans", "raw", "float32"] + (["deepcabac"] if deepcabac_available() else [])
SCHEME_NAMES = [s for s in SCHEMES if deepcabac_available() or SCHEMES[s]["codec"] != "deepcabac"]


def _update(seed=0, scale=0.01):
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": (rng.laplace(size=(16, 3, 3, 3)) * scale).astype(np.float32),
        "conv.bias": (rng.laplace(size=16) * scale).astype(np.float32),
        "fc.weight": (rng.laplace(size=(10, 64)) * scale).astype(np.float32),
        "fc.bias": (rng.laplace(size=10) * scale).astype(np.float32),
    }


MANIFEST = ParamManifest.from_arrays(_update())


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
def test_every_scheme_round_trips_bit_identically(scheme):
    comp = Compressor(CompressionSpec.from_dict({"scheme": scheme}), MANIFEST)
    for seed in range(3):
        payload, reconstruction = comp.compress(_update(seed))
        decoded = decompress(payload, MANIFEST)
        assert list(decoded) == list(reconstruction)
        for name, values in decoded.items():
            assert values.dtype == np.float32
            assert np.array_equal(values.view(np.int32), reconstruction[name].view(np.int32))


def test_dense_float32_is_lossless():
    update = _update()
    update["fc.bias"][0] = -0.0
    comp = Compressor(CompressionSpec.from_dict({"scheme": "dense"}), MANIFEST)
    decoded = decompress(comp.compress(update).payload, MANIFEST)
    for name in update:
        assert np.array_equal(decoded[name].view(np.int32), update[name].view(np.int32))


@st.composite
def updates(draw):
    """Update dicts over random shapes, input dtypes, sparsities and value ranges."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    scale = draw(st.sampled_from([0.0, 1e-6, 1e-3, 1.0, 100.0]))
    out = {}
    for i in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(st.integers(0, 7), min_size=1, max_size=3)))
        x = rng.laplace(size=shape) * scale
        x[rng.random(shape) < draw(st.sampled_from([0.0, 0.5, 0.99, 1.0]))] = 0
        out[f"t{i}"] = x.astype(dtype)
    return out


@pytest.mark.parametrize("codec", CODECS)
@settings(deadline=None, max_examples=25)
@given(update=updates(),
       quant=st.sampled_from([{"quantizer": "none"}, {"quantizer": "uniform", "qp": -40},
                              {"quantizer": "uniform", "bits": 4}, {"quantizer": "uniform", "step": 0.3},
                              {"quantizer": "stc"}, {"quantizer": "ecq", "bits": 3, "gamma": 0.2},
                              {"quantizer": "ecqx", "gamma": 0.1}, {"quantizer": "ec2t", "gamma": 0.05}]),
       sparse=st.sampled_from([{}, {"sparsify": "topk", "fraction": 0.2}, {"sparsify": "topk", "scope": "global"},
                               {"sparsify": "threshold", "target_sparsity": 0.5}, {"sparsify": "randk"},
                               {"sparsify": "structured", "include_1d": True}]))
def test_pipeline_round_trip_property(codec, update, quant, sparse):
    manifest = ParamManifest.from_arrays(update)
    comp = Compressor(CompressionSpec.from_dict({**quant, **sparse, "codec": codec, "error_feedback": True}), manifest)
    for _ in range(2):
        payload, reconstruction = comp.compress(update)
        decoded = decompress(payload, manifest)
        for name, values in decoded.items():
            assert values.shape == update[name].shape
            assert np.array_equal(values.view(np.int32), reconstruction[name].view(np.int32))


@pytest.mark.parametrize("scheme", ["stc", "topk-uniform-ans", "randk-uniform-ans", "ecqx-ans", "ec2t-ans"])
def test_error_feedback_invariant(scheme):
    """Over many rounds: sum(delivered) + residual == sum(true updates)."""
    comp = Compressor(CompressionSpec.from_dict({"scheme": scheme}), MANIFEST)
    true_sum = {k: np.zeros(v.shape, np.float64) for k, v in _update().items()}
    delivered = {k: np.zeros(v.shape, np.float64) for k, v in _update().items()}
    for t in range(60):
        update = _update(seed=t)
        decoded = decompress(comp.compress(update).payload, MANIFEST)
        for k in update:
            true_sum[k] += update[k]
            delivered[k] += decoded[k]
    for k in true_sum:
        gap = delivered[k] + comp.residual[k] - true_sum[k]
        assert np.max(np.abs(gap)) < 1e-5 * max(1.0, np.max(np.abs(true_sum[k])))
        # and the residual is really carrying something (the test is not vacuous)
        assert np.any(comp.residual[k] != 0)


def test_state_dict_round_trip_resumes_identically():
    spec = CompressionSpec.from_dict({"scheme": "randk-uniform-ans"})
    a = Compressor(spec, MANIFEST)
    a.compress(_update(0))
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b = Compressor(spec, MANIFEST)
    b.load_state_dict(state)
    assert a.compress(_update(1)).payload == b.compress(_update(1)).payload
    assert a.compress(_update(2)).payload != Compressor(spec, MANIFEST).compress(_update(2)).payload


def test_partial_update_and_bad_names():
    comp = Compressor(CompressionSpec.from_dict({"scheme": "topk-uniform-ans"}), MANIFEST)
    part = {"fc.weight": _update()["fc.weight"]}
    assert list(decompress(comp.compress(part).payload, MANIFEST)) == ["fc.weight"]
    with pytest.raises(ValueError, match="not in the parameter manifest"):
        comp.compress({"nope": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="shape"):
        comp.compress({"fc.bias": np.zeros(3, np.float32)})


def test_spec_validation_lists_choices():
    with pytest.raises(ConfigError, match="valid keys: scheme, quantizer"):
        CompressionSpec.from_dict({"quantiser": "uniform"})
    with pytest.raises(ConfigError, match="uniform"):
        CompressionSpec.from_dict({"quantizer": "gzip"})
    with pytest.raises(ConfigError, match="ans, deepcabac, float32, raw"):
        CompressionSpec.from_dict({"codec": "zip"})
    with pytest.raises(ConfigError, match="valid schemes"):
        CompressionSpec.from_dict({"scheme": "nope"})
    with pytest.raises(ConfigError, match="fraction"):
        CompressionSpec.from_dict({"sparsify": "topk", "fraction": 2.0})
    with pytest.raises(ConfigError, match="exactly one"):
        CompressionSpec.from_dict({"quantizer": "uniform", "qp": -30, "bits": 4})


def test_spec_from_toml_and_scheme_override():
    spec = CompressionSpec.from_toml('scheme = "stc"\nfraction = 0.02\n')
    assert spec.sparsify == "topk" and spec.quantizer == "stc" and spec.fraction == 0.02
    assert CompressionSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="TOML"):
        CompressionSpec.from_toml("scheme = ")


def test_decompress_rejects_garbage():
    with pytest.raises(PayloadError):
        decompress(b"\x00" * 64, MANIFEST)


def test_flags_and_relevance_reach_the_wire_and_the_quantizer():
    from fedcomp.compress.codec import FLAG_FULL_MODEL, decode_payload
    from fedcomp.compress.quant import UniformQuantizer

    seen = {}

    class RecordingQuantizer(UniformQuantizer):
        def quantize(self, values, name="", relevance=None):
            seen[name] = relevance
            return super().quantize(values, name, relevance)

    comp = Compressor(CompressionSpec.from_dict({"quantizer": "uniform"}), MANIFEST)
    comp.quantizer = RecordingQuantizer(qp=-32)
    update = _update()
    relevance = {"fc.weight": np.ones((10, 64), np.float32)}
    payload = comp.compress(update, flags=FLAG_FULL_MODEL, relevance=relevance).payload
    assert decode_payload(payload, MANIFEST).flags == FLAG_FULL_MODEL
    assert seen["fc.weight"] is relevance["fc.weight"] and seen["conv.weight"] is None


def test_overrides_route_tensors_through_their_own_spec():
    """FSFL-style: 1-D tensors dense and fine, the rest sparse; one payload, one codec."""
    sparse = CompressionSpec.from_dict({"scheme": "topk-uniform-ans", "fraction": 0.05, "include_1d": True})
    fine = CompressionSpec.from_dict({"quantizer": "uniform", "qp": -48, "error_feedback": True})
    comp = Compressor(sparse, MANIFEST, overrides={"conv.bias": fine, "fc.bias": fine})
    update = _update()
    payload, reconstruction = comp.compress(update)
    decoded = decompress(payload, MANIFEST)
    assert list(decoded) == list(update)
    for name in ("conv.bias", "fc.bias"):
        assert np.count_nonzero(decoded[name]) == update[name].size  # dense
        assert np.max(np.abs(decoded[name] - update[name])) <= 2.0**-12 / 2 + 1e-9  # qp -48: step 2**-12
    assert np.count_nonzero(decoded["fc.weight"]) == round(0.05 * 640)
    state = comp.state_dict()
    assert set(state) == {"rounds", *(f"residual/{k}" for k in update)}
    restored = Compressor(sparse, MANIFEST, overrides={"conv.bias": fine, "fc.bias": fine})
    restored.load_state_dict(state)
    assert restored.compress(_update(1)).payload == comp.compress(_update(1)).payload
