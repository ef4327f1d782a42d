"""The grid catch-up on the wire (fedcomp.exchange.catchup): server and clients without Ray."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedcomp.compress.compression import CompressionSpec
from fedcomp.compress.params import ParamManifest
from fedcomp.errors import ConfigError
from fedcomp.exchange.catchup import COUNTS, OutOfSync, ServerSync, client_catch_up, grid_step, model_grid
from fedcomp.exchange.channels import PayloadChannel
from fedcomp.exchange.protocol import FULL_MODEL
from fedcomp.exchange.updates import model_digest
from fedcomp.local.scaling import fold, scale_name

SHAPES = {"conv.weight": (8, 4, 3, 3), "conv.bias": (8,), "fc.weight": (10, 200), "fc.bias": (10,)}


def server(fold_scales: bool, keep: int = 5) -> tuple[ServerSync, ParamManifest]:
    rng = np.random.default_rng(0)
    base = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
    base |= {scale_name(w): np.ones(SHAPES[w][0], np.float32) for w in ("conv.weight", "fc.weight")}
    manifest = ParamManifest.from_arrays(base)
    down = CompressionSpec.from_dict({"scheme": "stc", "fraction": 0.05})  # off any fixed grid: snapped
    fine = CompressionSpec.from_dict({"quantizer": "uniform", "qp": -36, "error_feedback": True})
    channel = PayloadChannel(down, manifest, {n: fine for n in manifest.names if n.endswith("fsfl_scale")})
    return ServerSync(model_grid(manifest, base, down, -36), channel, keep, fold if fold_scales else None), manifest


@pytest.mark.parametrize("fold_scales", [False, True])
def test_clients_that_sat_out_reach_the_servers_model_in_one_message(fold_scales: bool) -> None:
    sync, manifest = server(fold_scales)
    rng, sampler = np.random.default_rng(1), random.Random(2)
    state: dict = {}
    clients: dict[int, tuple[int, dict]] = {}
    bases = set()
    for _ in range(25):
        for cid in sampler.sample(range(20), 4):
            version, held = clients.get(cid, (0, {}))
            message, base, replay = sync.catch_up(version)
            bases.add("replay" if replay else "diff" if base == version else "from W_0" if base == 0 else "float32")
            model, counts = client_catch_up(sync.grid, message.record, base, sync.version,
                                            model_digest(sync.model(), manifest), held, version, replay,
                                            sync.fold)
            assert all(np.array_equal(model[k], v) for k, v in sync.model().items())
            clients[cid] = (sync.version, {COUNTS + k: v for k, v in counts.items()})
        update = {k: (0.01 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
        update |= {scale_name(w): (0.01 * rng.standard_normal(SHAPES[w][0])).astype(np.float32)
                   for w in ("conv.weight", "fc.weight")}
        model, state = sync.advance(update, state)
    assert {"diff", "from W_0"} <= bases
    # folded scales: a client one or two versions behind gets the sparse updates replayed, not the denser difference
    assert ("replay" in bases) == fold_scales
    # the server's residual kept what STC's values lost to the grid: delivered + residual = sent (DESIGN 4.3)
    assert any(np.any(v) for k, v in state.items() if k.startswith("residual/"))


def test_float32_catch_up_and_out_of_sync() -> None:
    sync, manifest = server(False)
    sync.advance({"fc.bias": np.full(10, 0.5, np.float32)}, {})
    digest = model_digest(sync.model(), manifest)
    full = sync._float32_model().encoded
    model, counts = client_catch_up(sync.grid, full.record, FULL_MODEL, 1, digest, {}, 0)
    assert counts is None and model_digest(model, manifest) == digest
    message, base, _ = sync.catch_up(0)
    assert base == 0 and message.payload_bytes < full.payload_bytes
    with pytest.raises(OutOfSync, match="holds model version 3"):
        client_catch_up(sync.grid, message.record, 2, 1, digest, {}, 3)
    with pytest.raises(OutOfSync, match="does not match"):
        client_catch_up(sync.grid, message.record, 0, 1, digest + 1, {}, 0)


def test_grid_step_follows_the_downstream_quantizer() -> None:
    assert grid_step(CompressionSpec.from_dict({"scheme": "uniform-ans", "qp": -20})).params == (-20, 2)
    assert grid_step(CompressionSpec.from_dict({"quantizer": "uniform", "step": 0.01})).step == pytest.approx(0.01)
    assert grid_step(CompressionSpec.from_dict({"scheme": "stc"})).params == (-32, 2)


@pytest.mark.parametrize("fold_scales", [False, True])
def test_a_version_the_server_may_forget_gets_the_catch_up_of_an_unknown_client(fold_scales: bool) -> None:
    """`ServerSync.as_if_unknown`: what the strategy drops from its per-client versions (bounding them by
    the clients of the last ``keep`` rounds) would have got exactly the message of a client it knows
    nothing of (held 0); and it does not drop what would get another."""
    keep = 3
    sync, _ = server(fold_scales, keep)
    rng = np.random.default_rng(3)
    state: dict = {}
    forgettable, kept = set(), set()
    for _ in range(8):
        unknown = sync.catch_up(0)
        for held in [FULL_MODEL, *range(sync.version + 1)]:
            message = sync.catch_up(held)
            same = (message.base, message.replay, message.encoded.payload_bytes) == \
                (unknown.base, unknown.replay, unknown.encoded.payload_bytes) and \
                [v.data for v in message.encoded.record.values()] == [v.data for v in unknown.encoded.record.values()]
            if sync.as_if_unknown(held):
                assert same, (sync.version, held)
                forgettable.add(held)
            elif held not in (0, FULL_MODEL):
                kept.add(held)
        update = {k: (0.01 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
        model, state = sync.advance(update, state)
    assert FULL_MODEL in forgettable and 1 in forgettable and sync.version - 1 in kept
    assert not sync.as_if_unknown(sync.version)


def test_rms_grid_follows_each_tensors_scale_and_stays_bit_exact() -> None:
    rng = np.random.default_rng(3)
    base = {"conv.weight": (0.3 * rng.standard_normal((8, 4, 3, 3))).astype(np.float32),
            "fc.weight": (0.01 * rng.standard_normal((10, 200))).astype(np.float32),
            "fc.bias": np.zeros(10, np.float32)}
    manifest = ParamManifest.from_arrays(base)
    down = CompressionSpec.from_dict({"scheme": "uniform-ans", "qp": -40, "error_feedback": True})
    grid = model_grid(manifest, base, down, -36, "rms:0.5")
    for name in ("conv.weight", "fc.weight"):
        rms = float(np.sqrt(np.mean(np.square(base[name], dtype=np.float64))))
        assert grid.steps[name].step == pytest.approx(0.5 * rms, rel=1e-6)
    assert grid.steps["fc.bias"] == grid_step(down)  # 0 in W_0: the downstream quantizer's step
    assert grid.steps["conv.weight"].step > 10 * grid.steps["fc.weight"].step
    sync = ServerSync(grid, PayloadChannel(down, manifest), 5, None)
    state: dict = {}
    held, held_version = {}, 0
    for version in range(6):
        if version in (1, 2):  # a client trains in rounds 2 and 3, then sits out three rounds
            message, start, _ = sync.catch_up(held_version)
            _, counts = client_catch_up(grid, message.record, start, version, model_digest(sync.model(), manifest),
                                        held, held_version)
            held, held_version = {COUNTS + k: v for k, v in counts.items()}, version
        update = {k: (0.2 * grid.steps[k].step * rng.standard_normal(v.shape)).astype(np.float32)
                  for k, v in base.items()}
        _, state = sync.advance(update, state)
    message, start, replay = sync.catch_up(2)
    assert start == 2 and not replay  # one difference from the version the client holds
    model, _ = client_catch_up(grid, message.record, start, sync.version, model_digest(sync.model(), manifest),
                               held, 2)
    assert all(np.array_equal(model[k], v) for k, v in sync.model().items())
    assert any(np.any(v) for k, v in state.items() if k.startswith("residual/"))  # what the grid rounded off
    with pytest.raises(ConfigError, match="sync.grid"):
        model_grid(manifest, base, down, -36, "rms:-1")
