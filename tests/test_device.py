"""sim.device, sim.client_gpus and the device-resident loaders (no Flower run, no Ray)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fedcomp.run.config import resolve
from fedcomp.run.device import resolve_device
from fedcomp.errors import ConfigError
from fedcomp.run.experiment import client_indices, client_loader, eval_loader, local_seed, run_dataset, run_model
from fedcomp.launch.simulation import federation_args
from fedcomp.local.training import TrainSettings, evaluate, train
from conftest import ROOT

NO_CUDA = not torch.cuda.is_available()


def test_cpu_and_auto_resolve_to_what_this_process_has():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_one_clear_error(name):
    with pytest.raises(ConfigError, match=rf"sim.device={name} but this process sees no CUDA device.*sim.client_gpus"):
        resolve_device(name)


@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_cuda_index_beyond_the_devices_is_one_clear_error():
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "CPU", "cuda0"])
def test_bad_device_spelling_is_rejected_by_the_settings(value):
    with pytest.raises(ConfigError, match="sim.device"):
        resolve({"sim.device": value})


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
def test_cli_asking_for_cuda_without_cuda_stops_with_one_line():
    fedcomp = str(Path(sys.executable).parent / "fedcomp")
    done = subprocess.run([fedcomp, "run", "--set", "sim.device=cuda:0"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "400"}, cwd=ROOT)
    assert done.returncode == 2
    assert "sees no CUDA device" in done.stdout + done.stderr and "Traceback" not in done.stdout + done.stderr


def test_client_gpus_reach_rays_client_resources_through_flowers_own_parser():
    from flwr.cli.run.run import _parse_federation_config_overrides
    from flwr.cli.typing import SuperLinkConnection

    config = resolve({"num_clients": 7, "sim.client_cpus": 2, "sim.client_gpus": 0.25})
    args = federation_args(config)
    overrides = [value for flag, value in zip(args[::2], args[1::2]) if flag == "--federation-config"]
    parsed = _parse_federation_config_overrides(overrides, SuperLinkConnection(name="x", address="127.0.0.1:1"))
    assert parsed.num_supernodes == 7
    assert parsed.client_resources_num_cpus == 2
    assert parsed.client_resources_num_gpus == pytest.approx(0.25)


def _reference_loader(config, partition_id, server_round):
    """torch's per-sample loader over the same partition and seed: what the resident loader must reproduce."""
    subset = Subset(run_dataset(config).train, client_indices(config, partition_id).tolist())
    generator = torch.Generator().manual_seed(local_seed(config, server_round, partition_id))
    return DataLoader(subset, batch_size=int(config["batch_size"]), shuffle=True, generator=generator)


@pytest.mark.parametrize("num_clients,partition_id,server_round", [(10, 3, 2), (1000, 17, 5), (3, 0, 1)])
def test_resident_client_batches_equal_torchs_per_sample_loader(num_clients, partition_id, server_round):
    config = resolve({"num_clients": num_clients, "sim.device": "cpu"})
    fast = [(x.clone(), y.clone()) for x, y in client_loader(config, partition_id, server_round)]
    slow = list(_reference_loader(config, partition_id, server_round))
    assert len(fast) == len(slow) > 0
    for (x1, y1), (x2, y2) in zip(fast, slow):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(client_loader(config, partition_id, server_round).dataset) == len(client_indices(config, partition_id))


def test_resident_eval_batches_are_the_test_set_in_order():
    config = resolve({"sim.device": "cpu"})
    test = run_dataset(config).test
    xs, ys = zip(*eval_loader(config))
    assert torch.equal(torch.cat(xs), test.examples) and torch.equal(torch.cat(ys), torch.as_tensor(test.targets))


def test_training_through_resident_loaders_matches_the_per_sample_path():
    """Same seed, same batches: the model trained on either path is bit-identical on the CPU."""
    config = resolve({"sim.device": "cpu"})
    models = []
    for loader in (client_loader(config, 1, 1), _reference_loader(config, 1, 1)):
        model = run_model(config)
        torch.manual_seed(local_seed(config, 1, 1))
        stats = train(model, loader, TrainSettings.from_config(config))
        models.append((model, stats))
    (a, stats_a), (b, stats_b) = models
    assert stats_a == stats_b
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


class PlainDigits(Dataset):
    """A dataset without resident tensors: items only, as a folder dataset has."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]


def test_datasets_without_resident_tensors_keep_the_per_sample_loader():
    from fedcomp.run.experiment import _loader

    test = run_dataset(resolve({})).test
    loader = _loader(PlainDigits(test), np.arange(10), 4, torch.device("cpu"), None)
    assert isinstance(loader.dataset, Subset) and [len(y) for _, y in loader] == [4, 4, 2]
    model = run_model(resolve({"sim.device": "cpu"}))
    assert evaluate(model, loader)["num_examples"] == 10
