"""LRP weight relevances (fedcomp.local.relevance) against a hand computation."""

import numpy as np
import torch
from torch import nn

from fedcomp.local.relevance import weight_relevance

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
    r2 = np.eye(2)[y.numpy()]                       # output relevance: one-hot of the label
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
