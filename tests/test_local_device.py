"""Local training, QAT and LRP relevances move host-held data to the model's device.

On the CPU a batch is a `Held` wrapper that only `.to(device)` turns into a tensor, so a loop
that forgot the move fails, and the wrapper records where the batch went. With CUDA the same
runs on a GPU model with host-held data.
"""

import numpy as np
import pytest
import torch
from torch import nn

from fedcomp.local.qat import QATSettings, qat_train, quantized_names
from fedcomp.local.relevance import weight_relevance
from fedcomp.local.training import TrainSettings, model_device, train

pytestmark = pytest.mark.usefixtures("one_thread")


class Held:
    """A batch tensor kept on the host: usable only after ``.to(device)``, which is recorded."""

    def __init__(self, tensor: torch.Tensor, moves: list) -> None:
        self.tensor, self.moves = tensor, moves

    def to(self, device, non_blocking: bool = False) -> torch.Tensor:
        self.moves.append(torch.device(device))
        return self.tensor.to(device, non_blocking=non_blocking)


def _data(n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=generator)
    return x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()


def _model(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).to(device)


def _held_batches(moves: list, batch: int = 16) -> list[tuple[Held, Held]]:
    x, y = _data()
    return [(Held(x[i:i + batch], moves), Held(y[i:i + batch], moves)) for i in range(0, len(y), batch)]


@pytest.mark.parametrize("method", ["ecq", "ec2t"])
def test_a_qat_step_moves_each_batch_to_the_models_device(method):
    model, moves = _model(), []
    result = qat_train(model, _held_batches(moves), TrainSettings(epochs=2, lr=0.1), QATSettings(method, 4, 0.05))
    assert moves == [model_device(model)] * (2 * 2 * 3)  # x and y of 3 batches, 2 epochs
    assert result.metrics["train_accuracy"] > 0 and 0 <= result.metrics["weight_sparsity"] <= 1


def test_plain_training_and_relevances_move_the_batch_too():
    model, moves = _model(), []
    train(model, _held_batches(moves), TrainSettings(epochs=1))
    assert moves == [model_device(model)] * 6
    x, y = _data(8)
    relevance = weight_relevance(model, Held(x, moves), Held(y, moves))
    assert moves[6:] == [model_device(model)] * 2
    assert set(relevance) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["ecq", "ecqx", "ec2t"])
def test_qat_on_a_gpu_model_with_host_held_data(method):
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)  # on the host
    model = _model("cuda")
    result = qat_train(model, loader, TrainSettings(epochs=2, lr=0.1), QATSettings(method, 4, 0.05))
    params = dict(model.named_parameters())
    for name in quantized_names(model):
        assert params[name].is_cuda and len(torch.unique(params[name])) <= 16
    assert 0 <= result.metrics["weight_sparsity"] <= 1 and np.isfinite(result.metrics["train_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_relevances_of_a_gpu_model_come_back_to_the_host():
    x, y = _data(8)
    on_gpu = weight_relevance(_model("cuda"), x, y)
    on_cpu = weight_relevance(_model(), x, y)
    for name, value in on_cpu.items():
        assert isinstance(on_gpu[name], np.ndarray)
        np.testing.assert_allclose(on_gpu[name], value, rtol=1e-3, atol=1e-6)
