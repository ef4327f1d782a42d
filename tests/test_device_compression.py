"""Compression where the update lives: torch tensors give the same payloads as numpy arrays.

The sparsifiers, uniform/STC quantizers and error feedback are one torch implementation
(fedcomp.compress.quant.arrays); these tests pin that an update given as tensors (the ClientApp's
path, on the training device) and the same update given as numpy arrays produce the same
payload bytes and the same residual, round after round, for every preset's channels, and
that the reductions behind the symbols do not depend on the order of the values.
"""

import hashlib
import math

import numpy as np
import pytest
import torch

from fedcomp.compress.compression import SCHEMES, CompressionSpec, Compressor
from fedcomp.run.config import resolve
from fedcomp.models import build_model
from fedcomp.compress.params import ParamManifest, TensorSpec
from fedcomp.run.presets import PRESETS, preset
from fedcomp.compress.quant import QuantKind, UniformQuantizer, dequantize
from fedcomp.compress.quant.arrays import exact_sum
from fedcomp.compress.quant.sparsify import keep_largest
from fedcomp.exchange.updates import UpdateSettings

SETTINGS = {name: UpdateSettings.from_config(resolve(preset(name))) for name in PRESETS}
COMPRESSED_CHANNELS = [(name, direction) for name, settings in SETTINGS.items() for direction in ("up", "down")
                       if not getattr(settings, direction).lossless_dense]


def _updates(manifest: ParamManifest, rounds: int) -> list[dict[str, np.ndarray]]:
    """Laplacian updates with exact zeros and many equal magnitudes (ties for top-k to break)."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(rounds):
        update = {}
        for t in manifest.tensors:
            x = rng.laplace(scale=0.01, size=t.shape).astype(np.float32)
            x[rng.random(t.shape) < 0.2] = 0
            coarse = rng.random(t.shape) < 0.3  # on a 2**-9 grid: magnitudes repeat
            x[coarse] = np.round(x[coarse] * 512) / 512
            update[t.name] = x
        out.append(update)
    return out


def _run(channel, updates, as_tensors: bool) -> tuple[list[bytes], dict]:
    """Encode each update in turn with the sender's state carried along; the payloads and final state."""
    state, payloads = {}, []
    for update in updates:
        given = {k: torch.from_numpy(v.copy()) for k, v in update.items()} if as_tensors else update
        encoded, state = channel.encode(given, state)
        payloads.append(encoded.record["p0"].data)
    return payloads, state


@pytest.mark.parametrize("name,direction", COMPRESSED_CHANNELS)
def test_every_preset_channel_codes_tensors_and_arrays_to_the_same_bytes(name, direction):
    settings = SETTINGS[name]
    model = build_model("cnn", 10, (1, 8, 8))
    manifest = settings.manifest(model)
    updates = _updates(manifest, 4)
    arrays, state_a = _run(settings.channel(direction, manifest, 3), updates, as_tensors=False)
    tensors, state_t = _run(settings.channel(direction, manifest, 3), updates, as_tensors=True)
    assert arrays == tensors
    assert set(state_a) == set(state_t) and any(k.startswith("residual/") for k in state_a)
    for key in state_a:
        assert isinstance(state_t[key], np.ndarray)  # a CPU residual comes back as host numpy
        assert state_a[key].tobytes() == state_t[key].tobytes(), key


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "dense"])
def test_every_scheme_gives_the_same_payload_for_tensors_and_arrays(scheme):
    if SCHEMES[scheme]["codec"] == "deepcabac":
        pytest.importorskip("nncodec")
    manifest = ParamManifest.from_model(build_model("cnn", 10, (1, 8, 8)))
    spec = CompressionSpec.from_dict({"scheme": scheme})
    for update in _updates(manifest, 2):
        a = Compressor(spec, manifest).compress(update).payload
        b = Compressor(spec, manifest).compress({k: torch.from_numpy(v) for k, v in update.items()}).payload
        assert a == b


def test_a_residual_on_the_host_is_carried_into_a_tensor_update():
    manifest = ParamManifest.from_model(build_model("cnn", 10, (1, 8, 8)))
    spec = CompressionSpec.from_dict({"scheme": "stc"})
    first, second = _updates(manifest, 2)
    comp = Compressor(spec, manifest)
    comp.compress(first)
    state = comp.state_dict()
    resumed = Compressor(spec, manifest)
    resumed.load_state_dict({k: torch.from_numpy(v) if k.startswith("residual/") else v for k, v in state.items()})
    comp_payload = comp.compress(second).payload
    assert resumed.compress({k: torch.from_numpy(v) for k, v in second.items()}).payload == comp_payload


def test_top_k_keeps_the_lower_index_among_equal_magnitudes():
    x = torch.tensor([0.5, -1.0, 1.0, 0.25, -1.0, 1.0, 0.5, -0.5])
    got = keep_largest(x, 5).numpy()
    # a stable sort by decreasing magnitude is the reference
    order = np.argsort(-np.abs(x.numpy()), kind="stable")[:5]
    want = np.zeros(8, np.float32)
    want[order] = x.numpy()[order]
    assert np.array_equal(got, want)
    assert np.array_equal(keep_largest(x, 8).numpy(), x.numpy()) and not keep_largest(x, 0).any()


def test_exact_sum_does_not_depend_on_the_order_of_the_values():
    rng = np.random.default_rng(0)
    x = (rng.laplace(size=100_003) * np.exp(rng.normal(scale=4, size=100_003))).astype(np.float32)
    total = float(exact_sum(torch.from_numpy(x)))
    for seed in range(3):
        shuffled = torch.from_numpy(np.random.default_rng(seed).permutation(x))
        assert float(exact_sum(shuffled)) == total  # bit for bit
    assert math.isclose(total, math.fsum(x.astype(np.float64)), rel_tol=1e-9, abs_tol=1e-9 * np.abs(x).max())
    rows = torch.from_numpy(x[:100_000].reshape(100, 1000))
    per_row = exact_sum(rows, dim=1).numpy()
    assert np.allclose(per_row, rows.numpy().astype(np.float64).sum(axis=1), rtol=0, atol=1e-9 * np.abs(x).max())
    assert np.array_equal(exact_sum(rows[torch.randperm(100)], dim=1).sort().values.numpy(), np.sort(per_row))
    assert float(exact_sum(torch.zeros(5))) == 0.0
    tiny = torch.tensor([3e-30, -1e-30, 2e-30])  # 2**shift beyond float32's range
    assert math.isclose(float(exact_sum(tiny)), 4e-30, rel_tol=1e-6)


def test_symbols_come_back_in_the_form_they_went_in():
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    q_array = UniformQuantizer(qp=-20).quantize(x, "w")
    q_tensor = UniformQuantizer(qp=-20).quantize(torch.from_numpy(x), "w")
    assert isinstance(q_array.symbols, np.ndarray) and isinstance(q_tensor.symbols, torch.Tensor)
    assert np.array_equal(q_tensor.host().symbols, q_array.symbols)
    assert isinstance(q_tensor.dequantize(), torch.Tensor)
    assert np.array_equal(q_tensor.dequantize().numpy(), dequantize(q_array.symbols, QuantKind.UNIFORM_QP, (-20, 2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name,direction", COMPRESSED_CHANNELS)
def test_on_cuda_every_preset_codes_the_same_bytes_as_on_the_cpu(name, direction):
    settings = SETTINGS[name]
    manifest = settings.manifest(build_model("cnn", 10, (1, 8, 8)))
    updates = _updates(manifest, 3)
    cpu, _ = _run(settings.channel(direction, manifest, 3), updates, as_tensors=False)
    state, cuda = {}, []
    for update in updates:
        encoded, state = settings.channel(direction, manifest, 3).encode(
            {k: torch.from_numpy(v).cuda() for k, v in update.items()}, state)
        cuda.append(encoded.record["p0"].data)
    assert cpu == cuda


PORTABLE = ParamManifest((TensorSpec("conv1", (16, 3, 3, 3)), TensorSpec("conv1.bias", (16,)),
                          TensorSpec("conv2", (32, 16, 3, 3)), TensorSpec("fc", (10, 288)),
                          TensorSpec("fc.bias", (10,))))
#: sha256 (first 16 hex digits) of three error-feedback rounds of payloads of :func:`_portable_update`.
#: Measured once: on the same updates without the repeated magnitudes, the numpy implementation
#: before the torch port (main at 94ea4a0) gave the same bytes for every scheme here; with them,
#: only stc differed, where numpy's argpartition had picked other positions among equal magnitudes.
PINNED = {
    "uniform-ans": "d8f18edb83e153bc",
    "uniform-deepcabac": "f5d2803fb0a987c1",
    "topk-uniform-ans": "94f55b09c38a7220",
    "topk-uniform-deepcabac": "d05f3bf90b6c54d2",
    "topk-uniform-raw": "ddff7187ba815888",
    "nnc": "1cc197d152b426af",
    "stc": "c0c2cda920697a31",
    "randk-uniform-ans": "cec9f0f52eb075d1",
}


def _portable_update(round_: int) -> dict[str, np.ndarray]:
    """Updates from integer arithmetic and exact float operations: the same bits on any machine,
    with exact zeros and repeated magnitudes."""
    out, offset = {}, round_ * 1_000_003
    for t in PORTABLE.tensors:
        i = np.arange(offset, offset + t.size, dtype=np.uint64)
        u = ((i * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)) >> np.uint64(40)).astype(np.float64)
        x = (u / 2.0**24 - 0.5) ** 3 * 0.08
        x[(i % np.uint64(7)) == 0] = 0
        x[(i % np.uint64(5)) == 1] = np.round(x[(i % np.uint64(5)) == 1] * 256) / 256
        out[t.name] = x.astype(np.float32).reshape(t.shape)
        offset += t.size
    return out


@pytest.mark.parametrize("scheme", PINNED)
def test_the_symbols_of_every_ported_scheme_are_pinned(scheme):
    if SCHEMES[scheme]["codec"] == "deepcabac":
        pytest.importorskip("nncodec")
    for as_tensors in (False, True):
        comp, digest = Compressor(CompressionSpec.from_dict({"scheme": scheme}), PORTABLE), hashlib.sha256()
        for r in range(3):
            update = _portable_update(r)
            digest.update(comp.compress({k: torch.from_numpy(v) for k, v in update.items()} if as_tensors
                                        else update).payload)
        assert digest.hexdigest()[:16] == PINNED[scheme]
