"""Compact catch-up on a fixed grid (fedcomp.compress.catchup): maths only, no Flower."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from fedcomp.compress.catchup import CountHistory, GridStep, ModelGrid, add_counts
from fedcomp.compress.codec.base import get_codec
from fedcomp.compress.compression import CompressionSpec, Compressor
from fedcomp.compress.params import ParamManifest
from fedcomp.errors import PayloadError
from fedcomp.local.scaling import fold, scale_name

QP = -32
SHAPES = {"conv.weight": (16, 8, 3, 3), "conv.bias": (16,), "fc.weight": (10, 400), "fc.bias": (10,)}


def setup(scales: bool = False) -> tuple[ParamManifest, ModelGrid]:
    rng = np.random.default_rng(0)
    base = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
    steps = {k: GridStep.from_qp(QP) for k in SHAPES}
    if scales:
        for w in ("conv.weight", "fc.weight"):
            base[scale_name(w)] = np.ones(SHAPES[w][0], np.float32)
            steps[scale_name(w)] = GridStep.from_qp(-36)
    manifest = ParamManifest.from_arrays(base)
    return manifest, ModelGrid(manifest, base, steps)


def digest(tensors: dict[str, np.ndarray], manifest: ParamManifest) -> int:
    crc = 0
    for name in manifest.names:
        crc = zlib.crc32(np.ascontiguousarray(tensors[name], np.float32).tobytes(), crc)
    return crc


class Server:
    """A server of the grid protocol: top-k + uniform qp (the grid's step) + error feedback downstream."""

    def __init__(self, manifest: ParamManifest, grid: ModelGrid, keep: int, fraction: float = 0.01) -> None:
        self.grid, self.manifest = grid, manifest
        spec = CompressionSpec.from_dict({"scheme": "topk-uniform-ans", "fraction": fraction, "qp": QP})
        fine = CompressionSpec.from_dict({"quantizer": "uniform", "qp": -36, "codec": "ans", "error_feedback": True})
        self.sender = Compressor(spec, manifest, {k: fine for k in manifest.names if k.endswith("fsfl_scale")})
        self.history = CountHistory(grid.zeros(), keep=keep)
        self.codec = get_codec("ans")
        self.rng = np.random.default_rng(1)
        self.drift = {k: self.rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}

    def round(self, refold: bool = False) -> None:
        """One synthetic aggregated update: a persistent direction plus noise, compressed and put on the grid."""
        update = {k: (0.002 * d + 0.004 * self.rng.standard_normal(d.shape)).astype(np.float32)
                  for k, d in self.drift.items()}
        update |= {k: (0.003 * self.rng.standard_normal(self.grid.base[k].shape)).astype(np.float32)
                   for k in self.manifest.names if k.endswith("fsfl_scale")}
        delivered = {t.name: t.dequantize() for t in self.sender.prepare(update)}
        symbols, leftover = self.grid.snap(delivered)
        assert all(not np.any(v) for v in leftover.values())  # the quantizer's step is the grid's
        counts = add_counts(self.history.counts, symbols)
        if refold:
            counts, leftover = self.grid.refold(counts, fold)
            residual = self.sender.residual
            for k, v in leftover.items():
                if k in residual:
                    self.sender.main.feedback.residual[k] = residual[k] + v
        self.history.advance(counts)

    def catch_up(self, version: int) -> tuple[bytes, int]:
        """The payload that brings a client at ``version`` to the current one, and the version it applies to."""
        diff = self.history.since(version)
        base = version if diff is not None else 0
        return self.grid.encode(diff if diff is not None else self.history.since(0), self.codec), base


def test_snap_leftover_and_refold_land_on_the_grid() -> None:
    manifest, grid = setup(scales=True)
    values = {"fc.bias": np.array([0.01, -0.0049, 0.3], np.float32)}
    counts, leftover = grid.snap(values)
    step = grid.steps["fc.bias"].step
    assert counts["fc.bias"].tolist() == [3, -1, 77]
    np.testing.assert_allclose(counts["fc.bias"] * step + leftover["fc.bias"], values["fc.bias"], atol=1e-9)
    scaled = grid.zeros()
    scaled[scale_name("fc.weight")] = np.full(10, 50, np.int32)  # s = 1 + 50 * 2**-9
    folded, rest = grid.refold(scaled, fold)
    assert not np.any(folded[scale_name("fc.weight")])  # the scale is back at 1
    target = fold(grid.materialize(scaled))["fc.weight"].astype(np.float64)
    np.testing.assert_allclose(grid.materialize(folded)["fc.weight"] + rest["fc.weight"], target, atol=1e-6)
    assert np.abs(rest["fc.weight"]).max() <= grid.steps["fc.weight"].step / 2 + 1e-7
    assert set(rest) == {"fc.weight", scale_name("fc.weight")}
    with pytest.raises(ValueError, match="non-finite"):
        grid.snap({"fc.bias": np.array([np.nan, 0, 0], np.float32)})


def test_catch_up_size_grows_sublinearly_and_reconstructs_the_servers_model() -> None:
    manifest, grid = setup()
    server = Server(manifest, grid, keep=40)
    for _ in range(40):
        server.round()
    t = server.history.version
    sizes = {}
    for k in (1, 2, 5, 10, 20, 30):
        payload, base = server.catch_up(t - k)
        assert base == t - k
        sizes[k] = len(payload)
        # the client held W_{t-k}: its counts plus the decoded difference are the server's model, bit for bit
        held = add_counts(grid.zeros(), server.history.since(0))  # start from N_t ...
        held = add_counts(held, {n: -d for n, d in server.history.since(t - k).items()})  # ... back to N_{t-k}
        reached = grid.materialize(add_counts(held, grid.decode(payload)))
        assert digest(reached, manifest) == digest(grid.materialize(server.history.counts), manifest)
    # sublinear: every doubling of k less than doubles the bytes (a mostly-noise sequence, whose top-k
    # supports overlap little: the hard case), and the log-log slope is well below 1
    assert sizes[2] < 2 * sizes[1] and sizes[10] < 2 * sizes[5] and sizes[20] < 2 * sizes[10]
    assert sizes[30] < 15 * sizes[1], sizes
    slope = np.polyfit(np.log(list(sizes)), np.log(list(sizes.values())), 1)[0]
    assert slope < 0.85, (slope, sizes)
    dense = 4 * manifest.num_values
    assert sizes[30] < dense / 4, (sizes, dense)


@pytest.mark.parametrize("refold", [False, True])
def test_bit_exact_sync_under_sampling_over_50_rounds(refold: bool) -> None:
    """100 clients, 10 sampled per round, 50 rounds: every sampled client reaches W_t exactly from
    whatever it held, by one payload (a difference, or the counts from W_0 when the server no longer
    remembers its version); some clients sit out 30 rounds or more."""
    manifest, grid = setup(scales=refold)
    server = Server(manifest, grid, keep=20)
    clients: dict[int, tuple[int, dict[str, np.ndarray]]] = {}  # id -> (version, counts)
    sampler = random.Random(3)
    gaps, from_seed = [], 0
    last_seen: dict[int, int] = {}
    for rnd in range(1, 51):
        target = digest(grid.materialize(server.history.counts), manifest)
        for cid in sampler.sample(range(100), 10):
            version, counts = clients.get(cid, (0, grid.zeros()))
            payload, base = server.catch_up(version)
            if base != version:
                counts, from_seed = grid.zeros(), from_seed + 1
            counts = add_counts(counts, grid.decode(payload))
            model = grid.materialize(counts)
            assert digest(model, manifest) == target
            assert all(np.array_equal(model[k], v) for k, v in grid.materialize(server.history.counts).items())
            clients[cid] = (server.history.version, counts)
            if cid in last_seen:
                gaps.append(rnd - last_seen[cid])
            last_seen[cid] = rnd
        server.round(refold=refold)
    assert max(gaps) >= 30 and from_seed > 0, (max(gaps), from_seed)


def test_a_payload_off_the_grid_is_refused() -> None:
    manifest, grid = setup()
    other = ModelGrid(manifest, grid.base, {k: GridStep.from_qp(QP + 1) for k in manifest.names})
    payload = other.encode({"fc.bias": np.ones(10, np.int32)}, get_codec("ans"))
    with pytest.raises(PayloadError, match="not on this run's grid"):
        grid.decode(payload)


def test_history_survives_a_checkpoint() -> None:
    manifest, grid = setup()
    server = Server(manifest, grid, keep=5)
    for _ in range(8):
        server.round()
    arrays, meta = server.history.state_dict()
    restored = CountHistory.from_state(arrays, meta)
    for v in (0, 3, 4, 6, 8):
        a, b = server.history.since(v), restored.since(v)
        assert (a is None) == (b is None)
        if a is not None:
            assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert server.history.since(2) is None
