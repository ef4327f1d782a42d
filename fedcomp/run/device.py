"""Where a party computes: the ``sim.device`` setting resolved to a ``torch.device``.

``auto`` is CUDA when this process sees a CUDA device, else the CPU. ``cuda`` and ``cuda:N``
are checked against what this process sees, so a run asking for a GPU on a machine (or a
Ray actor) without one stops with one readable error instead of a deep CUDA traceback.
"""

from __future__ import annotations

import re

import torch

from fedcomp.errors import ConfigError
from fedcomp.settings import Check, Setting

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def valid_device_name(name: str) -> bool:
    """Whether ``name`` is a spelling ``sim.device`` accepts (availability is checked later)."""
    return DEVICE_PATTERN.fullmatch(name) is not None


SETTINGS: dict[str, Setting] = {
    "sim.device": Setting("auto", "where training and evaluation run: auto (CUDA when present), cpu, cuda, cuda:N",
                          check=Check(valid_device_name, "auto, cpu, cuda or cuda:N")),
}


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) stands for in this process."""
    if not valid_device_name(name):
        raise ConfigError(f"setting 'sim.device' must be auto, cpu, cuda or cuda:N; got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"sim.device={name} but this process sees no CUDA device (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}). Use sim.device=auto or cpu; in a simulation, "
            "also give each client a GPU share with sim.client_gpus > 0 (Ray hides GPUs from actors without one).")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"sim.device={name} but this process sees {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)
