"""EC2T's super-network: Net2Net widening and deepening of a ReLU MLP, checked by hand and by its function."""

import pytest
import torch
from torch import nn

from fedcomp.models.supernet import scale_mlp


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.mark.parametrize("width, extra_depth", [(1.0, 0), (2.0, 0), (1.5, 2), (3.0, 1)])
def test_scaled_network_computes_the_base_function(width, extra_depth):
    base = _mlp()
    x = torch.randn(16, 2, 3)
    bigger = scale_mlp(base, width, extra_depth, generator=torch.Generator().manual_seed(1))
    hidden = [m.out_features for m in bigger if isinstance(m, nn.Linear)][:-1]
    assert hidden == [round(4 * width), round(3 * width)] + [round(3 * width)] * extra_depth
    torch.testing.assert_close(bigger(x), base(x), atol=1e-5, rtol=1e-5)


def test_widening_a_tiny_layer_by_hand():
    base = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        base[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        base[0].bias.copy_(torch.tensor([0.5, -0.5]))
        base[2].weight.copy_(torch.tensor([[5.0, 6.0]]))
        base[2].bias.copy_(torch.tensor([0.25]))
    wide = scale_mlp(base, 1.5, generator=torch.Generator().manual_seed(0))
    w1, b1, w2 = wide[0].weight.detach(), wide[0].bias.detach(), wide[2].weight.detach()
    # the third unit copies unit k; unit k's outgoing weight is split over its two copies
    k = 0 if torch.equal(w1[2], torch.tensor([1.0, 2.0])) else 1
    assert torch.equal(w1[2], base[0].weight[k].detach()) and b1[2] == base[0].bias[k]
    expected = [[5.0 / 2, 6.0, 5.0 / 2]] if k == 0 else [[5.0, 6.0 / 2, 6.0 / 2]]
    torch.testing.assert_close(w2, torch.tensor(expected))
    assert wide[2].bias.item() == 0.25
    # deepening inserts an identity layer before the output layer
    deep = scale_mlp(base, 1.0, 1)
    assert torch.equal(deep[2].weight.detach(), torch.eye(2)) and not deep[2].bias.detach().any()


def test_noise_separates_the_copies_and_the_base_is_left_alone():
    base = _mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    wide = scale_mlp(base, 2.0, noise=0.1, generator=torch.Generator().manual_seed(0))
    w = wide[1].weight.detach()
    assert torch.equal(w[:4], base[1].weight.detach())  # the originals are kept
    assert not any(torch.equal(w[j], base[1].weight[i].detach()) for j in range(4, 8) for i in range(4))
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_bad_input():
    with pytest.raises(ValueError, match="width"):
        scale_mlp(_mlp(), 0.5)
    with pytest.raises(ValueError, match="extra_depth"):
        scale_mlp(_mlp(), 1.0, -1)
    with pytest.raises(ValueError, match="Linear"):
        scale_mlp(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="Linear"):
        scale_mlp(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)))
