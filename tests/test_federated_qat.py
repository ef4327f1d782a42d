"""Quantization-aware training in a federation (issue 20): the real ServerApp and ClientApp over the
loopback grid (no Ray), on tiny data."""

import json

import numpy as np
import torch

import fedcomp.local.qat as qat
from fedcomp.compress.quant import QuantKind
from fedcomp.compress.quant.ecq import ECQQuantizer
from fedcomp.fantastic4.compile import compile_model, split
from fedcomp.records.saved_model import load_model
from fedcomp.run.config import resolve
from fedcomp.run.experiment import run_dataset

GAMMA = 0.1


def test_clients_train_on_the_global_grid_and_the_device_runs_the_aggregate_bit_exactly(tmp_path, monkeypatch):
    from clients.client_app import app
    from strategies.loopback import run_loopback

    calls = []
    real = qat.qat_train

    def recording(model, loader, settings, q):  # the real QAT, its start and result kept for the checks below
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = real(model, loader, settings, q)
        calls.append((start, result, len(loader.dataset)))
        return result

    monkeypatch.setattr(qat, "qat_train", recording)
    config = resolve({"model": "mlp", "num_clients": 3, "rounds": 2, "seed": 3, "qat.method": "ecq", "qat.bits": 4,
                      "qat.gamma": GAMMA, "edge.fantastic4": True, "edge.gamma": GAMMA, "edge.every": 1,
                      "output.save_model": True, "output.checkpoint": False, "output.dir": str(tmp_path)})
    run_dir = run_loopback(config, app)
    assert len(calls) == 6  # 3 clients x 2 rounds

    for start, result, _ in calls:
        max_size = max(v.numel() for n, v in start.items() if v.ndim >= 2)
        quantizer = ECQQuantizer(4, GAMMA, max_size)
        for t in result.tensors:
            if t.kind is QuantKind.FLOAT32:
                continue
            # on the grid of the global model the round started from, which every client of the round shares
            step = quantizer.grid(start[t.name].numpy())[0]
            book = np.arange(t.params[0], t.params[0] + len(t.codebook), dtype=np.float32) * np.float32(step)
            np.testing.assert_array_equal(t.codebook, book)
            assert t.symbols.min() >= -8 and t.symbols.max() <= 7
    for first, second in zip(calls[:3], calls[3:]):  # rounds start from one global model, hence one grid
        assert all(torch.equal(first[0][n], calls[0][0][n]) for n in first[0])
        assert all(torch.equal(second[0][n], calls[3][0][n]) for n in second[0])
    # clients send their full-precision (shadow) weights: the next global model is their weighted mean
    sizes = np.array([n for _, _, n in calls[:3]], dtype=np.float64)
    for name, value in calls[3][0].items():
        if name in calls[0][1].shadow:
            mean = sum(n * r.shadow[name].double().numpy() for (_, r, n) in calls[:3]) / sizes.sum()
            np.testing.assert_allclose(value.double().numpy(), mean, rtol=0, atol=1e-6)

    # the aggregate on the device: the same ECQ grid and assignment the next round's clients quantize it to
    model, _ = load_model(run_dir / "model.npz")
    device = split(model)
    quantizer = ECQQuantizer(4, GAMMA, max(lin.weight.numel() for lin in device.linears))
    train = run_dataset(config).train
    compiled = compile_model(model, torch.stack([train[i][0] for i in range(config["edge.calibration"])]),
                             gamma=GAMMA)
    for layer, lin, step in zip(compiled.layers, device.linears, compiled.steps):
        expected = quantizer.quantize(lin.weight.detach().numpy())
        np.testing.assert_array_equal(layer.weights, expected.symbols)
        np.testing.assert_array_equal(layer.weights * np.float32(step), expected.dequantize())
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert 0.3 < rows[-1]["f4_accuracy"] <= 1.0 and abs(rows[-1]["f4_accuracy"] - rows[-1]["accuracy"]) < 0.15


def test_a_quantized_model_runs_on_the_device_as_trained():
    """A model QAT left on its 4-bit grid is not quantized again: the device holds its very integers."""
    from torch.utils.data import DataLoader

    config = resolve({"model": "mlp"})
    from fedcomp.run.experiment import run_model
    from fedcomp.local.training import TrainSettings

    torch.manual_seed(0)
    model = run_model(config)
    data = run_dataset(config)
    loader = DataLoader(torch.utils.data.Subset(data.train, range(256)), batch_size=32, shuffle=True)
    result = qat.qat_train(model, loader, TrainSettings(epochs=1), qat.QATSettings("ecq", 4, 0.3))
    compiled = compile_model(model, torch.stack([data.train[i][0] for i in range(64)]), gamma=0.0)
    trained = [t for t in result.tensors if t.kind is not QuantKind.FLOAT32]
    for layer, t, step in zip(compiled.layers, trained, compiled.steps):
        np.testing.assert_array_equal(layer.weights * np.float32(step), t.dequantize())


def test_qat_starts_in_its_round_after_a_float_warm_up(tmp_path, monkeypatch):
    from clients.client_app import app
    from strategies.loopback import run_loopback

    starts = []
    real = qat.qat_train

    def recording(model, loader, settings, q):
        starts.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return real(model, loader, settings, q)

    monkeypatch.setattr(qat, "qat_train", recording)
    config = resolve({"model": "mlp", "num_clients": 3, "rounds": 3, "seed": 3, "qat.method": "ecq",
                      "qat.start_round": 3, "output.checkpoint": False, "output.dir": str(tmp_path)})
    run_loopback(config, app)
    assert len(starts) == 3  # rounds 1 and 2 trained in float: only round 3's three clients ran QAT
    assert all(torch.equal(s[n], starts[0][n]) for s in starts for n in s)  # from one global model
