import numpy as np

from fedcomp.compress.quant import QuantKind, STCQuantizer, TopK


def test_stc_ternarizes_to_mean_of_kept():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 20)).astype(np.float32)
    sparse = TopK(0.05).sparsify({"w": x})["w"]
    q = STCQuantizer().quantize(sparse, "w")
    assert q.kind == QuantKind.UNIFORM_STEP
    assert set(np.unique(q.symbols)) <= {-1, 0, 1}
    kept = sparse != 0
    mu = np.float32(np.abs(sparse[kept]).mean())
    assert np.isclose(q.params[0], mu, rtol=1e-6)
    recon = q.dequantize()
    assert np.array_equal(recon[kept], np.sign(sparse[kept]) * np.float32(q.params[0]))
    assert np.all(recon[~kept] == 0)


def test_stc_all_zero():
    q = STCQuantizer().quantize(np.zeros((3, 3), dtype=np.float32))
    assert np.all(q.symbols == 0) and np.all(q.dequantize() == 0)
