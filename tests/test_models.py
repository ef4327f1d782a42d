"""The model registry: every built-in model, registration, and python: models."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fedcomp.data import load_dataset
from fedcomp.errors import ModelError
from fedcomp.models import build_model, model_names, register_model, registry

BUILTIN = ["cnn", "cnn_bn", "lenet5", "mlp", "mobilenet_v2", "resnet18", "resnet20", "vgg11_bn"]


def test_registered_names() -> None:
    assert model_names() == BUILTIN


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 32, 32)])
@pytest.mark.parametrize("name", BUILTIN)
def test_builds_and_runs_a_forward_pass(name: str, input_shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, input_shape).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *input_shape))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11_bn", "resnet20"])
def test_stem_takes_the_input_channels_and_head_the_classes(name: str) -> None:
    model = build_model(name, 7, (1, 8, 8))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert convs[0].in_channels == 1
    assert convs[0].stride == (1, 1)
    assert linears[-1].out_features == 7


def test_cnn_is_small_and_has_no_batchnorm() -> None:
    model = build_model("cnn", 10, (1, 8, 8))
    parameters = sum(p.numel() for p in model.parameters())
    assert 20_000 <= parameters <= 50_000
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(p.numel() for p in build_model("cnn", 10, (3, 32, 32)).parameters()) <= 50_000


def test_mlp_is_64_64_on_the_flattened_image() -> None:
    layers = [m for m in build_model("mlp", 10, (1, 8, 8)).modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(64, 64), (64, 64), (64, 10)]


def test_cnn_learns_digits_in_a_few_steps() -> None:
    torch.manual_seed(0)
    bundle = load_dataset("digits")
    images = torch.stack([bundle.train[i][0] for i in range(128)])
    labels = torch.tensor([bundle.train[i][1] for i in range(128)])
    model = build_model("cnn", bundle.num_classes, bundle.input_shape)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert (model(images).argmax(1) == labels).float().mean() > 0.9


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(ModelError) as error:
        build_model("resnet50", 10, (3, 32, 32))
    assert isinstance(error.value, ValueError)
    for name in [*BUILTIN, "python:MODULE:FUNCTION"]:
        assert name in str(error.value)


def test_register_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "BUILTIN_MODELS", dict(registry.BUILTIN_MODELS))

    @register_model("linear")
    def linear(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes))

    assert "linear" in model_names()
    assert build_model("linear", 4, (1, 8, 8))(torch.zeros(3, 1, 8, 8)).shape == (3, 4)
    with pytest.raises(ModelError, match="already registered under the name 'linear'"):
        register_model("linear")(linear)


PLUGIN_SOURCE = textwrap.dedent(
    """
    from torch import nn

    def tiny(num_classes, input_shape):
        channels, height, width = input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))

    def not_a_model(num_classes, input_shape):
        return "tiny"
    """
)


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "fedcomp_test_model_plugin"
    (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_python_plugin_model(plugin_module: str) -> None:
    model = build_model(f"python:{plugin_module}:tiny", 5, (2, 3, 3))
    assert model(torch.zeros(4, 2, 3, 3)).shape == (4, 5)


@pytest.mark.parametrize(
    ("reference", "complaint"),
    [
        ("python:{module}:not_a_model", "returned str, expected a torch.nn.Module"),
        ("python:{module}:missing", "has no attribute 'missing'"),
        ("python:no_such_model_module:build", "cannot import module 'no_such_model_module'"),
        ("python:{module}", "expected the form python:MODULE:FUNCTION"),
    ],
)
def test_python_plugin_model_errors(plugin_module: str, reference: str, complaint: str) -> None:
    with pytest.raises(ModelError, match=complaint):
        build_model(reference.format(module=plugin_module), 5, (2, 3, 3))
