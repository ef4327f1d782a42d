"""Compiling trained models for FantastIC4: folding, rejection, 4-bit grids, integer activations, accuracy."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedcomp.data import load_dataset
from fedcomp.errors import ModelError
from fedcomp.fantastic4.compile import compile_model, grid_of, split
from fedcomp.fantastic4.engine import dense_reference
from fedcomp.models import build_model
from fedcomp.compress.quant.tensor import QuantizedTensor, QuantKind
from fedcomp.local.training import TrainSettings, evaluate, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def mlp(digits):
    """The default mlp trained centrally on digits (10 epochs, seed 0)."""
    torch.manual_seed(0)
    model = build_model("mlp", digits.num_classes, digits.input_shape)
    train(model, DataLoader(digits.train, batch_size=32, shuffle=True), TrainSettings(epochs=10, lr=0.05))
    return model


def inputs(dataset, count):
    return torch.stack([dataset[i][0] for i in range(count)])


def test_batchnorm_is_folded_into_the_linear_before_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(8, 3))
    bn = model[2]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    model.eval()
    device = split(model)
    assert len(device.linears) == 2 and device.relu == [True, False] and device.frontend is None
    x = torch.randn(5, 1, 3, 4)
    with torch.no_grad():
        assert torch.allclose(device.float_forward(device.features(x))[-1], model(x), atol=1e-5)


def test_a_layer_the_device_cannot_run_is_rejected_by_name(digits):
    cnn = build_model("cnn", digits.num_classes, digits.input_shape)
    with pytest.raises(ModelError, match=r"layer '0' \(Conv2d\) cannot run on FantastIC4.*edge.head=true"):
        split(cnn)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 4)

    with pytest.raises(ModelError, match=r"layer 'Custom' \(Custom\)"):
        split(Custom())
    with pytest.raises(ModelError, match=r"layer '1' \(Sigmoid\)"):
        split(nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)))


def test_head_mode_compiles_the_fully_connected_part_and_runs_the_rest_on_the_host(digits):
    torch.manual_seed(0)
    cnn = build_model("cnn", digits.num_classes, digits.input_shape)
    device = split(cnn, head=True)
    assert device.names == ["7", "9"] and device.relu == [True, False]
    x = inputs(digits.test, 16)
    with torch.no_grad():
        assert torch.allclose(device.float_forward(device.features(x))[-1], cnn(x), atol=1e-5)
    compiled = compile_model(cnn, inputs(digits.train, 128), head=True)
    assert compiled.input_low == 0  # the head's inputs come after a ReLU and max-pooling
    assert compiled.logits(x).shape == (16, 10)


@pytest.mark.parametrize("act_bits", [4, 8])
def test_compiled_network_is_integer_4bit_and_bit_exact(digits, mlp, act_bits):
    compiled = compile_model(mlp, inputs(digits.train, 256), act_bits=act_bits)
    for layer, step in zip(compiled.layers, compiled.steps):
        assert layer.weights.dtype == np.int8 and -8 <= layer.weights.min() and layer.weights.max() <= 7
        assert step > 0 and len(np.unique(layer.weights)) <= 16
    hidden = compiled.layers[:-1]
    assert all(layer.low == 0 and layer.high == 2**act_bits - 1 and layer.shift is not None for layer in hidden)
    assert all(0 < layer.multiplier < 2**16 for layer in hidden)
    assert compiled.layers[-1].shift is None
    assert (compiled.input_low, compiled.input_high) == (-(2 ** (act_bits - 1)), 2 ** (act_bits - 1) - 1)
    x = inputs(digits.test, 200)
    q = compiled.quantize_input(x)
    assert q.min() >= compiled.input_low and q.max() <= compiled.input_high
    assert np.array_equal(compiled.logits(x), dense_reference(compiled.layers, q))


def test_4bit_mlp_keeps_its_accuracy_within_2_points_on_the_emulator(digits, mlp):
    test = DataLoader(digits.test, batch_size=512)
    calibration = inputs(digits.train, 256)
    model = mlp
    float_accuracy = evaluate(model, test)["accuracy"]
    assert float_accuracy > 0.95
    plain = compile_model(model, calibration).accuracy(test)
    torch.manual_seed(0)
    finetuned = compile_model(model, calibration, finetune_epochs=2,
                              finetune_loader=DataLoader(digits.train, batch_size=32, shuffle=True)).accuracy(test)
    assert plain >= float_accuracy - 0.02
    assert finetuned >= float_accuracy - 0.02
    assert evaluate(model, test)["accuracy"] == float_accuracy  # compiling leaves the model alone


def test_larger_gamma_gives_sparser_layers(digits, mlp):
    calibration = inputs(digits.train, 128)
    zeros = [sum(int((layer.weights == 0).sum()) for layer in compile_model(mlp, calibration, gamma=g).layers)
             for g in (0.0, 0.1, 0.3)]
    assert zeros[0] < zeros[1] < zeros[2]


def test_a_quantizer_off_a_uniform_grid_is_rejected():
    class Squares:
        def quantize(self, values, name="", relevance=None):
            symbols = np.clip(np.rint(values), -3, 3).astype(np.int32)
            return QuantizedTensor(name, symbols, QuantKind.CODEBOOK, (-3,), np.array([-9, -4, -1, 0, 1, 4, 9.0]))

    with pytest.raises(ModelError, match="not on a uniform grid"):
        grid_of(Squares(), np.array([[0.0, 1.1, 2.0, -3.0]]), "fc")  # not on a grid already
