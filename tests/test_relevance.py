"""LRP weight relevances (fedcomp.local.relevance) against a hand computation."""

import numpy as np
import torch
from torch import nn

from fedcomp.local.relevance import accumulated_relevance, weight_relevance

EPS = 1e-6


def stab(z):
    return z + np.where(z == 0, 1.0, np.sign(z)) * EPS


def test_tiny_mlp_matches_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.rand(5, 3)
    y = torch.tensor([0, 1, 1, 0, 1])
    got = weight_relevance(model, x, y)
    assert set(got) == {"0.weight", "0.bias", "2.weight", "2.bias"}

    w1, b1 = model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy()
    w2, b2 = model[2].weight.detach().double().numpy(), model[2].bias.detach().double().numpy()
    xs = x.double().numpy()
    z1 = xs @ w1.T + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ w2.T + b2
    r2 = np.eye(2)[y.numpy()] * z2                  # output relevance: the true class's logit
    s2 = r2 / stab(z2)
    r1 = a1 * (s2 @ w2)                             # epsilon rule for the last layer; ReLU passes it on
    s1 = r1 / stab(z1)
    expected = {
        "2.weight": w2 * (s2.T @ a1),               # sum_b w_ji a_bi R_bj / z_bj
        "2.bias": b2 * s2.sum(0),
        "0.weight": w1 * (s1.T @ xs),
        "0.bias": b1 * s1.sum(0),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6)
    # conservation at the last layer: weight + bias relevances of a layer add up to its output relevance
    assert np.isclose(got["2.weight"].sum() + got["2.bias"].sum(), r2.sum(), rtol=1e-4)
    # the model is unchanged and has no hooks left
    assert model.training and not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def conv_valid(x, w, b):
    """``conv2d`` without padding, stride 1, written out: x (B, C, H, W), w (O, C, k, k) -> (B, O, H-k+1, W-k+1)."""
    batch, _, height, width = x.shape
    out, _, k, _ = w.shape
    z = np.zeros((batch, out, height - k + 1, width - k + 1))
    for i in range(height - k + 1):
        for j in range(width - k + 1):
            z[:, :, i, j] = np.einsum("bckl,ockl->bo", x[:, :, i:i + k, j:j + k], w) + b
    return z


def conv_weight_share(x, s, k):
    """``sum_b,positions x_patch * s``: (O, C, k, k) from inputs x (B, C, H, W) and output shares s (B, O, H', W')."""
    grad = np.zeros((s.shape[1], x.shape[1], k, k))
    for i in range(s.shape[2]):
        for j in range(s.shape[3]):
            grad += np.einsum("bo,bckl->ockl", s[:, :, i, j], x[:, :, i:i + k, j:j + k])
    return grad


def conv_input_relevance(x, w, s):
    """``x * (W^T s)``: the relevance a conv passes to its input (x (B, C, H, W), shares s (B, O, H', W'))."""
    k = w.shape[2]
    back = np.zeros_like(x)
    for i in range(s.shape[2]):
        for j in range(s.shape[3]):
            back[:, :, i:i + k, j:j + k] += np.einsum("bo,ockl->bckl", s[:, :, i, j], w)
    return x * back


def test_conv_layers_match_hand_computation():
    """conv (flat, first) -> ReLU -> conv (z-plus) -> ReLU -> linear (epsilon), every sum written out."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3, 2))
    with torch.no_grad():
        for layer in (model[0], model[2], model[5]):
            layer.bias.uniform_(-0.2, 0.3)  # non-zero biases: they enter z and take their own share
    x = torch.randn(4, 1, 4, 4)
    y = torch.tensor([0, 1, 1, 0])
    got = weight_relevance(model, x, y)
    assert set(got) == {"0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias"}

    p = {n: t.detach().double().numpy() for n, t in model.named_parameters()}
    xs = x.double().numpy()
    z1 = conv_valid(xs, p["0.weight"], p["0.bias"])         # (4, 2, 2, 2)
    a1 = np.maximum(z1, 0)
    z2 = conv_valid(a1, p["2.weight"], p["2.bias"])         # (4, 3, 1, 1)
    a2 = np.maximum(z2, 0).reshape(4, 3)
    z3 = a2 @ p["5.weight"].T + p["5.bias"]
    r3 = np.eye(2)[y.numpy()] * z3                            # the true class's logit
    s3 = r3 / stab(z3)
    r2 = (a2 * (s3 @ p["5.weight"])).reshape(4, 3, 1, 1)      # epsilon rule, ReLU passes it on
    s2 = r2 / stab(z2)
    # z-plus at the second conv (its inputs a1 >= 0): positive weights and bias only
    w2_plus, b2_plus = np.maximum(p["2.weight"], 0), np.maximum(p["2.bias"], 0)
    r1 = conv_input_relevance(a1, w2_plus, r2 / stab(conv_valid(a1, w2_plus, b2_plus)))
    s1 = r1 / stab(z1)
    expected = {
        "5.weight": p["5.weight"] * (s3.T @ a2),
        "5.bias": p["5.bias"] * s3.sum(0),
        "2.weight": p["2.weight"] * conv_weight_share(a1, s2, 2),
        "2.bias": p["2.bias"] * s2.sum((0, 2, 3)),
        "0.weight": p["0.weight"] * conv_weight_share(xs, s1, 3),
        "0.bias": p["0.bias"] * s1.sum((0, 2, 3)),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    assert any(np.abs(value).max() > 1e-3 for value in expected.values())


def test_cnn_relevances_have_parameter_shapes():
    from fedcomp.models import build_model

    model = build_model("cnn", 10, (1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    rel = weight_relevance(model, x, torch.tensor([1, 2, 3, 4]))
    params = dict(model.named_parameters())
    assert set(rel) == set(params)
    for name, value in rel.items():
        assert value.shape == tuple(params[name].shape) and np.isfinite(value).all()
        if name.endswith("weight"):  # biases start at zero, so their relevance w * ... is zero
            assert np.any(value != 0)


def test_accumulated_relevance_is_the_sum_over_batches():
    """Two LRP passes of 5 add up to the per-batch relevances; the loader is read only as far as needed;
    up to one pass it is exactly ``weight_relevance`` on those examples (the federated default)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    x, y = torch.randn(14, 3), torch.randint(0, 2, (14,))
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 14, 4)]   # loader batches of 4: 4, 4, 4, 2
    read = []

    def loader():
        for batch in batches:
            read.append(len(batch[1]))
            yield batch

    got = accumulated_relevance(model, loader(), examples=10, batch=5)
    assert read == [4, 4, 4]                                          # 12 >= 10 examples: the 4th batch unread
    first, second = weight_relevance(model, x[:5], y[:5]), weight_relevance(model, x[5:10], y[5:10])
    assert set(got) == set(first) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for name in got:
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], first[name] + second[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert not np.allclose(got["0.weight"], first["0.weight"])        # the second pass contributes
    one_pass = accumulated_relevance(model, iter(batches), examples=6, batch=8)
    for name, value in weight_relevance(model, x[:6], y[:6]).items():
        np.testing.assert_array_equal(one_pass[name], value)
    short = accumulated_relevance(model, iter(batches[:1]), examples=10, batch=5)  # the loader ends first
    for name, value in weight_relevance(model, x[:4], y[:4]).items():
        np.testing.assert_allclose(short[name], value, rtol=1e-5, atol=1e-7)
