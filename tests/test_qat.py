"""Quantization-aware training and post-training ECQ/ECQx on a model trained on digits."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedcomp.data import load_dataset
from fedcomp.models import build_model
from fedcomp.local.qat import QATSettings, _Quantize, qat_train, quantize_model, quantized_names
from fedcomp.compress.quant.ecq import ECQQuantizer, ECQxQuantizer
from fedcomp.local.relevance import accumulated_relevance
from fedcomp.local.training import TrainSettings, evaluate, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    bundle = load_dataset("digits", seed=0)
    train_loader = DataLoader(bundle.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return bundle, train_loader, DataLoader(bundle.test, batch_size=512)


@pytest.fixture(scope="module")
def trained_cnn(digits):
    bundle, _, _ = digits
    torch.manual_seed(0)
    model = build_model("cnn", bundle.num_classes, bundle.input_shape)
    # its own loader: the shared one's order depends on which tests drew from it first
    loader = DataLoader(bundle.train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    train(model, loader, TrainSettings(epochs=8, lr=0.05))
    return model


@pytest.mark.parametrize("method, levels", [("ecq", 16), ("ecqx", 16), ("ec2t", 3)])
def test_qat_leaves_quantized_weights_and_trains(digits, method, levels):
    bundle, train_loader, test_loader = digits
    torch.manual_seed(1)
    model = build_model("mlp", bundle.num_classes, bundle.input_shape)
    result = qat_train(model, train_loader, TrainSettings(epochs=4, lr=0.05), QATSettings(method, 4, 0.05))
    params = dict(model.named_parameters())
    for name in quantized_names(model):
        values = np.unique(params[name].detach().numpy())
        assert len(values) <= levels and 0.0 in values
        assert not torch.equal(result.shadow[name], params[name].detach())  # shadows are full precision
    assert 0.1 < result.metrics["weight_sparsity"] < 1.0
    assert evaluate(model, test_loader)["accuracy"] > 0.85


def test_ec2t_scale_gradients_are_the_exact_derivatives():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    state = _Quantize(model, QATSettings("ec2t", gamma=0.0))
    state.apply(None)
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    state.backward_scales()
    # the same loss written with w_p, w_n as differentiable leaves
    leaves = {n: (pos.detach().clone().requires_grad_(), neg.detach().clone().requires_grad_())
              for n, (pos, neg) in state.scales.items()}
    weights = {n: (state.symbols[n] > 0).float() * leaves[n][0] - (state.symbols[n] < 0).float() * leaves[n][1]
               for n in leaves}
    out = torch.nn.functional.linear(x, weights["0.weight"], model[0].bias)
    out = torch.nn.functional.linear(out.relu(), weights["2.weight"], model[2].bias)
    torch.nn.functional.cross_entropy(out, y).backward()
    for name, (pos, neg) in state.scales.items():
        assert torch.allclose(pos.grad, leaves[name][0].grad, atol=1e-6)
        assert torch.allclose(neg.grad, leaves[name][1].grad, atol=1e-6)
        assert neg.grad.item() != 0


def _sparsity(tensors, names):
    picked = [t.symbols for t in tensors if t.name in names]
    return sum(int((s == 0).sum()) for s in picked) / sum(s.size for s in picked)


def test_ecqx_keeps_relevant_weights_and_accuracy_at_equal_sparsity(digits, trained_cnn):
    bundle, _, test_loader = digits
    base = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    names = set(quantized_names(trained_cnn))
    # over the whole training set, as the ECQx authors accumulate them, in a fixed order: the shared shuffled
    # loader's next examples depend on which tests ran before
    relevance = accumulated_relevance(trained_cnn, DataLoader(bundle.train, batch_size=256), len(bundle.train))

    def run(quantizer):
        trained_cnn.load_state_dict(base)
        tensors = quantize_model(trained_cnn, quantizer, relevance)
        return tensors, _sparsity(tensors, names), evaluate(trained_cnn, test_loader)["accuracy"]

    x_tensors, x_sparsity, x_accuracy = run(ECQxQuantizer(bits=4, gamma=0.1, p=0.0))
    # ECQ at the same sparsity (just at or below ECQx's): bisect gamma
    low, high = 0.0, 1.0
    for _ in range(14):
        mid = (low + high) / 2
        low, high = (mid, high) if run(ECQQuantizer(bits=4, gamma=mid))[1] < x_sparsity else (low, mid)
    e_tensors, e_sparsity, e_accuracy = run(ECQQuantizer(bits=4, gamma=low))
    assert abs(e_sparsity - x_sparsity) < 0.01 and e_sparsity <= x_sparsity
    assert x_sparsity > 0.5
    assert x_accuracy >= e_accuracy  # ECQx zeroes as many weights, and at least as harmlessly
    top = {n: np.abs(relevance[n]) >= np.quantile(np.abs(relevance[n]), 0.9) for n in names}
    kept = [sum(int((t.symbols[top[t.name]] != 0).sum()) for t in ts if t.name in names)
            for ts in (x_tensors, e_tensors)]
    assert kept[0] > kept[1]
    trained_cnn.load_state_dict(base)


def test_qat_command_trains_saves_and_rejects_bad_input(tmp_path):
    from typer.testing import CliRunner

    from fedcomp.cli import app

    out = tmp_path / "model.pt"
    runner = CliRunner()
    result = runner.invoke(app, ["qat", "--set", "model=mlp", "--method", "ec2t", "--epochs", "1", "--pretrain", "2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ec2t" in result.output and "smaller than float32" in result.output
    state = torch.load(out, weights_only=True)
    assert len(torch.unique(state["1.weight"])) <= 3
    bad = runner.invoke(app, ["qat", "--method", "nope"])
    assert bad.exit_code != 0 and "ecq, ecqx, ec2t" in str(bad.exception)


def test_local_train_follows_the_run_settings(digits):
    from fedcomp.run.config import resolve
    from fedcomp.local.qat import local_train

    bundle, train_loader, _ = digits
    plain = resolve({})
    assert QATSettings.from_config(plain) is None
    config = resolve({"qat.method": "ecq", "qat.bits": 3, "qat.gamma": 0.1})
    qat = QATSettings.from_config(config)
    assert (qat.method, qat.bits, qat.gamma) == ("ecq", 3, 0.1)
    warm = resolve({"qat.method": "ecq", "qat.start_round": 4})
    assert QATSettings.from_config(warm, 3) is None  # the float warm-up
    assert QATSettings.from_config(warm, 4) == QATSettings.from_config(warm) == QATSettings("ecq", start_round=4)
    torch.manual_seed(0)
    model = build_model("mlp", bundle.num_classes, bundle.input_shape)
    metrics = local_train(model, train_loader, TrainSettings(epochs=1), qat)
    assert "weight_sparsity" in metrics
    # the client keeps its full-precision shadow weights (what it sends; tests/test_federated_qat.py)
    assert len(np.unique(model[1].weight.detach().numpy())) > 8
    metrics = local_train(model, train_loader, TrainSettings(epochs=1), None)
    assert "weight_sparsity" not in metrics and len(np.unique(model[1].weight.detach().numpy())) > 8


def test_ec2t_second_phase_keeps_the_assignment_and_trains_the_ternary_values(digits):
    bundle, train_loader, test_loader = digits
    torch.manual_seed(2)
    model = build_model("mlp", bundle.num_classes, bundle.input_shape)
    settings, qat = TrainSettings(epochs=1, lr=0.05), QATSettings("ec2t", gamma=0.05)
    state = _Quantize(model, qat)
    train(model, train_loader, settings, hook=state)
    state.freeze()
    symbols = {n: s.clone() for n, s in state.symbols.items()}
    scales = {n: (float(p.detach()), float(q.detach())) for n, (p, q) in state.scales.items()}
    shadows = {n: p.detach().clone() for n, p in state.params.items()}
    train(model, train_loader, settings, hook=state)
    after = {n: p.detach().clone() for n, p in state.params.items()}
    tensors = state.apply(None)
    for name, p in state.params.items():
        assert torch.equal(state.symbols[name], symbols[name])  # the assignment is frozen
        assert torch.equal(after[name], shadows[name])  # the shadows get no step
        pos, neg = (float(v.detach()) for v in state.scales[name])
        assert (pos, neg) != scales[name]  # the ternary values trained
        expected = (symbols[name] > 0).float() * pos - (symbols[name] < 0).float() * neg
        torch.testing.assert_close(p.detach(), expected)
        assert tensors[name].params == pytest.approx((pos, neg))
    assert evaluate(model, test_loader)["accuracy"] > 0.8
    with pytest.raises(ValueError, match="second phase"):
        qat_train(model, train_loader, settings, QATSettings("ecq"), frozen_epochs=1)


def test_ecqx_qat_final_assignment_uses_the_relevances_training_used():
    """One epoch on an unshuffled loader: training quantizes with the relevances of the starting model on
    the first ``relevance_batch`` examples, and the returned model is assigned with those same relevances
    (on the trained shadows and the starting grid), not with relevances recomputed from the shadows."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 3))
    start = copy.deepcopy(model)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    qat = QATSettings("ecqx", 3, 0.2, relevance_batch=40)
    result = qat_train(model, loader, TrainSettings(epochs=1, lr=0.05), qat)

    names = quantized_names(start)
    params = dict(start.named_parameters())
    quantizer = ECQxQuantizer(3, 0.2, qat.p, max(params[n].numel() for n in names))
    relevance = accumulated_relevance(start, loader, 40)
    trained = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if name in result.shadow:
                p.copy_(result.shadow[name])
    recomputed = accumulated_relevance(trained, loader, 40)
    got = {t.name: t.symbols for t in result.tensors}
    differs = []
    for name in names:
        step = quantizer.grid(params[name].detach().numpy())[0]
        shadow = result.shadow[name].numpy()
        expected = quantizer.quantize(shadow, name, relevance[name], step).symbols
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
        differs.append(not np.array_equal(expected, quantizer.quantize(shadow, name, recomputed[name], step).symbols))
    assert any(differs)  # relevances recomputed from the shadows would have assigned differently
