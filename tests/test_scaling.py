"""FSFL scaling, partial-group selection and the update arithmetic, without Flower or Ray."""

import numpy as np
import pytest
import torch
from torch import nn

from fedcomp.run.config import resolve
from fedcomp.errors import ConfigError
from fedcomp.compress.params import state_arrays
from fedcomp.local.partial import select
from fedcomp.local.scaling import SCALE_SUFFIX, effective, fold, scale_specs, scaled_call, unit_scales
from fedcomp.local.training import TrainSettings, train
from fedcomp.exchange.updates import UpdateSettings, apply_update, model_digest, weighted_mean


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 8), nn.ReLU(), nn.Linear(8, 3))


def random_scales(model: nn.Module, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.uniform(0.5, 1.5, s.shape).astype(np.float32) for s in scale_specs(model)}


def test_every_conv_and_linear_gets_one_scale_per_output_filter():
    model = small_net()
    assert {s.name: s.shape for s in scale_specs(model)} == {
        f"0.weight{SCALE_SUFFIX}": (4,), f"4.weight{SCALE_SUFFIX}": (8,), f"6.weight{SCALE_SUFFIX}": (3,)}
    assert all(np.all(v == 1) for v in unit_scales(model).values())


def test_folding_scales_leaves_the_outputs_unchanged():
    model = small_net().eval()
    scales = random_scales(model)
    x = torch.randn(16, 1, 5, 5)
    with torch.no_grad():
        scaled = scaled_call(model, {k: torch.from_numpy(v) for k, v in scales.items()}, x)
        folded = effective({**state_arrays(model), **scales})
        assert all(np.all(v == 1) for k, v in fold({**state_arrays(model), **scales}).items() if SCALE_SUFFIX in k)
        plain = small_net().eval()
        plain.load_state_dict({k: torch.from_numpy(v) for k, v in folded.items()}, strict=False)
        reference = plain(x)
    assert not torch.allclose(scaled, model(x))  # the scales really change the function
    torch.testing.assert_close(scaled, reference, rtol=1e-5, atol=1e-6)


def test_scale_only_training_moves_scales_and_nothing_else():
    model = small_net()
    before = state_arrays(model)
    scales = {k: torch.tensor(v, requires_grad=True) for k, v in unit_scales(model).items()}
    data = [(torch.randn(8, 1, 5, 5), torch.randint(0, 3, (8,))) for _ in range(4)]
    train(model, data, TrainSettings(epochs=2, lr=0.1), trainable=[], scales=scales, scale_lr=0.5)
    after = state_arrays(model)
    for name in before:  # weights and BN statistics are frozen
        assert np.array_equal(before[name], after[name]), name
    assert all(not torch.all(s == 1) for s in scales.values())
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_partial_groups_select_the_named_tensors():
    model = small_net()
    names = [*state_arrays(model), *(s.name for s in scale_specs(model))]
    assert select(model, names, "") == names
    assert select(model, names, "bias") == ["0.bias", "4.bias", "6.bias"]
    assert select(model, names, "bn") == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert select(model, names, "head") == ["6.weight", "6.bias"]
    assert select(model, names, "last:1") == ["6.weight", "6.bias", f"6.weight{SCALE_SUFFIX}"]
    assert select(model, names, "scales,bias") == [n for n in names if n.endswith(("bias", SCALE_SUFFIX))
                                                   and not n.startswith("1.")]
    assert select(model, names, "4.*") == ["4.weight", "4.bias", f"4.weight{SCALE_SUFFIX}"]
    with pytest.raises(ConfigError, match="unknown partial group"):
        select(model, names, "heads")
    with pytest.raises(ConfigError, match="selects no tensor"):
        select(model, names, "9.*")
    with pytest.raises(ConfigError, match="blocks"):
        select(model, names, "last:12")
    plain = nn.Sequential(nn.Linear(3, 2))
    assert select(plain, ["0.weight", "0.bias"], "bn,bias") == ["0.bias"]  # no BatchNorm: bn adds nothing
    with pytest.raises(ConfigError, match="selects no tensor"):
        select(plain, ["0.weight", "0.bias"], "bn")


def test_apply_update_and_digest_agree_across_parties():
    model = small_net()
    settings = UpdateSettings.from_config(resolve({"up.scheme": "topk-uniform-ans", "fsfl.mode": "joint"}))
    manifest = settings.manifest(model)
    start = settings.initial_global(model)
    update = {"4.weight": np.full((8, 100), 0.01, np.float32), f"4.weight{SCALE_SUFFIX}": np.full(8, 0.5, np.float32)}
    a = apply_update(start, update, fold_scales=True)
    b = apply_update({k: v.copy() for k, v in start.items()}, update, fold_scales=True)
    assert model_digest(a, manifest) == model_digest(b, manifest) != model_digest(start, manifest)
    np.testing.assert_array_equal(a["4.weight"], (1.5 * (start["4.weight"] + np.float32(0.01))).astype(np.float32))
    assert np.all(a[f"4.weight{SCALE_SUFFIX}"] == 1)
    kept = apply_update(start, update, fold_scales=False)
    assert np.all(kept[f"4.weight{SCALE_SUFFIX}"] == 1.5)


def test_weighted_mean_per_tensor():
    out = weighted_mean([{"a": np.ones(2, np.float32), "b": np.zeros(1, np.float32)}, {"a": np.full(2, 4.0)}],
                        [1.0, 3.0])
    np.testing.assert_allclose(out["a"], [3.25, 3.25])
    np.testing.assert_allclose(out["b"], [0.0])


def test_settings_that_do_not_fit_together_are_refused():
    with pytest.raises(ConfigError, match="fsfl.mode needs compressed upstream"):
        resolve({"fsfl.mode": "joint"})
    with pytest.raises(ConfigError, match="needs compressed upstream updates too"):
        resolve({"down.scheme": "stc"})
    with pytest.raises(ConfigError, match="'scales' needs fsfl.mode"):
        resolve({"up.scheme": "stc", "partial.groups": "scales"})
    with pytest.raises(ConfigError, match="upstream compression: .*fraction"):
        resolve({"up.scheme": "stc", "up.fraction": 2.0})
    with pytest.raises(ConfigError, match="must be one of"):
        resolve({"up.scheme": "gzip"})
    with pytest.raises(ConfigError, match="qat.method trains the whole model"):
        resolve({"up.scheme": "stc", "fsfl.mode": "joint", "qat.method": "ecq"})
    config = resolve({"up.scheme": "stc"}, {"up.fraction": 0.05})
    assert UpdateSettings.from_config(config).up.fraction == 0.05
    assert UpdateSettings.from_config(config).up.quantizer == "stc"


def test_joint_training_adapts_the_batchnorm_statistics_it_sends_once_and_freezes_the_rest():
    """A pretrained model's BatchNorm statistics describe its source domain: in the first round joint mode
    re-estimates those it sends on the local data (the scaled forward pass), then freezes them."""
    from torch.utils.data import DataLoader, TensorDataset

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 5 * 5, 3))
    torch.manual_seed(0)
    x = torch.randn(24, 1, 5, 5) * 3 + 2
    loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (24,))), batch_size=8)
    with torch.no_grad():
        model[1].running_mean.fill_(100.0)
        model[4].running_mean.fill_(100.0)
    scales = {k: torch.tensor(v, requires_grad=True) for k, v in random_scales(model).items()}
    with torch.no_grad():
        conv = scaled_call(nn.Sequential(model[0]), {"0.weight" + SCALE_SUFFIX: scales["0.weight" + SCALE_SUFFIX]}, x)
    settings = TrainSettings(epochs=1, lr=1e-9, momentum=0.0)
    trainable = ["1.weight", "1.bias", "1.running_mean", "1.running_var", "7.weight", "7.bias"]
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    train(model, loader, settings, trainable=trainable, scales=scales)  # a later round: statistics frozen
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    train(model, loader, settings, trainable=trainable, scales=scales, adapt_batchnorm=True)
    assert torch.allclose(model[1].running_mean, conv.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(model[1].running_var, conv.var((0, 2, 3)), rtol=0.05)  # unbiased per batch, averaged
    assert torch.all(model[4].running_mean == 100.0)  # not sent: frozen at the global values
    assert not model[1].training and not model[4].training
