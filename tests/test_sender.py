"""The sender and the channels without a server or a client: what one message carries and rebuilds."""

import numpy as np
import pytest

from fedcomp.compress.compression import CompressionSpec, Compressor
from fedcomp.compress.params import ParamManifest, TensorSpec
from fedcomp.errors import PayloadError
from fedcomp.exchange.channels import DenseChannel, PayloadChannel, sender_state

MANIFEST = ParamManifest((TensorSpec("w", (40, 5)), TensorSpec("w.fsfl_scale", (40,)), TensorSpec("b", (40,))))
SPARSE = CompressionSpec.from_dict({"scheme": "topk-uniform-ans", "fraction": 0.05})
FINE = CompressionSpec.from_dict({"quantizer": "uniform", "qp": -40, "codec": "ans", "error_feedback": True})


def update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(40, 5)).astype(np.float32), "b": rng.normal(size=40).astype(np.float32)}


def channel() -> PayloadChannel:
    return PayloadChannel(SPARSE, MANIFEST, {"w.fsfl_scale": FINE}, seed=3)


def test_a_second_stage_sees_the_reconstruction_and_travels_in_the_same_payload():
    seen = {}

    def stage(reconstruction):
        seen.update(reconstruction)
        return {"w.fsfl_scale": np.full(40, 0.01, np.float32)}

    first = update(0)
    encoded, state = channel().encode(first, second_stage=stage)
    # the stage saw exactly what the receiver rebuilds of the first stage: sparse, quantized values
    assert set(seen) == {"w", "b"} and all(np.array_equal(seen[k], encoded.reconstruction[k]) for k in seen)
    assert np.count_nonzero(seen["w"]) == 10  # top 5% of 200
    decoded = channel().decode(encoded.record, MANIFEST)
    assert list(decoded) == ["w", "w.fsfl_scale", "b"]  # one payload, manifest order
    assert all(np.array_equal(decoded[k], v) for k, v in encoded.reconstruction.items())
    assert np.allclose(decoded["w.fsfl_scale"], 0.01, atol=2.0 ** -11)  # qp -40: step 2^-10, fine and dense
    assert encoded.payload_bytes == len(encoded.payload) and encoded.dense_bytes == 4 * (200 + 40 + 40)
    assert int(state["rounds"]) == 2  # both stages went through one pipeline, one after the other


def test_one_sender_with_two_stages_equals_two_pipelines_handing_over_their_state():
    """What the ClientApp did before the sender existed: prepare, save the state, prepare again, encode."""
    first, second = update(1), {"w.fsfl_scale": np.linspace(-0.1, 0.1, 40, dtype=np.float32)}
    state = channel().encode(update(2))[1]
    encoded, new_state = channel().encode(first, state, second_stage=lambda rec: second)

    spec = channel().spec
    a = Compressor(spec, MANIFEST, {"w.fsfl_scale": FINE})
    a.load_state_dict(state)
    quantized = a.prepare(first)
    b = Compressor(spec, MANIFEST, {"w.fsfl_scale": FINE})
    b.load_state_dict(a.state_dict())
    quantized += b.prepare(second)
    assert Compressor(spec, MANIFEST).encode(quantized).payload == encoded.payload
    assert new_state.keys() == b.state_dict().keys()
    assert all(np.array_equal(new_state[k], v) for k, v in b.state_dict().items())


def test_the_state_of_the_old_layout_continues_the_same_sender():
    """Before the sender object, states were saved as residual/residual/<name> and residual/rounds."""
    state = channel().encode(update(4))[1]
    assert set(state) == {"rounds", "residual/w", "residual/b"}
    legacy = {"residual/" + k: v for k, v in state.items()}
    assert sender_state({**legacy, "global/w": np.zeros(1), "version": np.zeros(1)}).keys() == state.keys()
    now = channel().encode(update(5), state)
    then = channel().encode(update(5), sender_state(legacy))
    assert now[0].payload == then[0].payload
    assert all(np.array_equal(now[1][k], then[1][k]) for k in now[1])


@pytest.mark.parametrize("make", [DenseChannel, channel])
def test_whole_models_travel_through_the_channel_methods(make):
    ch = make()
    model = {**update(6), "w.fsfl_scale": np.ones(40, np.float32)}
    full = ch.encode_model(model)
    assert all(np.array_equal(ch.decode_model(full.record, MANIFEST)[k], v) for k, v in model.items())
    if isinstance(ch, DenseChannel):
        return
    with pytest.raises(PayloadError, match="flagged as a full model"):  # an update is not a whole model
        ch.decode_model(ch.encode(update(7))[0].record, MANIFEST)
