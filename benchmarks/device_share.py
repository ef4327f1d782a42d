"""Compression's share of a client round on the training device: the numpy path against the torch path.

For ``resnet20`` (0.27M parameters) and the CIFAR-adapted ``resnet18`` (11.2M) on CIFAR-shaped
synthetic data (random 3x32x32 images and labels, batched on the device beforehand, so no
data loading is timed), one process measures, interleaved, on ``--device`` (``auto``: CUDA
when present, else the CPU; one torch thread):

- local training: one epoch of SGD (batch 64, lr 0.05, momentum 0.9) over ``--samples`` examples;
- per preset, the client's upstream compression of the weight update ``W_local - W_t``, two ways:
  - ``numpy``: as the ClientApp did before: the local model to host numpy arrays, then error
    feedback, sparsification and quantization on the CPU (since the port, by the same torch
    code on the wrapped arrays: the numpy implementation itself is gone);
  - ``torch``: as the ClientApp does now: ``W_t`` (host numpy, as decoded) to the device, the
    update, error feedback, sparsification and quantization on the device, the int32 symbols
    to the host;
  both then entropy coded on the CPU into the payload (wire format). Each path carries its
  own error-feedback residual from repetition to repetition, and every repetition checks that
  both paths produced the same payload bytes.

FSFL's scale vectors (a few hundred floats) are left out of ``fsfl-bidir``; its weight update
is ``topk-ef``'s at 0.7%. ECQ/ECQx/EC2T are not here: they run in numpy on the host.

Only fedcomp's maths is imported (no Flower, no Ray, no dataset loaders), so this runs on a
machine with torch, torchvision, numpy and constriction alone (``benchmarks/gpu_check.sh``).

    python benchmarks/device_share.py [--device auto] [--reps 5] [--samples N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedcomp.compress.compression import Compressor, direction_spec, scheme_settings  # noqa: E402
from fedcomp.run.device import resolve_device  # noqa: E402
from fedcomp.errors import ConfigError  # noqa: E402
from fedcomp.models import build_model  # noqa: E402
from fedcomp.compress.params import ParamManifest, load_arrays, state_arrays, state_tensors  # noqa: E402
from fedcomp.run.presets import preset  # noqa: E402
from fedcomp.records.provenance import source_commit  # noqa: E402
from fedcomp.compress.quant.arrays import as_tensor  # noqa: E402
from fedcomp.local.training import TrainSettings, train  # noqa: E402

MODELS = ["resnet20", "resnet18"]
PRESETS = ["topk-ef", "stc", "nnc", "fsfl-bidir"]
PATHS = ["numpy", "torch"]
#: modules the measured path must not import (the GPU machine has none of them)
FRAMEWORKS = ("flwr", "ray", "flwr_datasets", "datasets", "sklearn")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batches(samples: int, batch: int, device: torch.device, seed: int = 0) -> list:
    """CIFAR-shaped random images and labels, already batched on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (samples,), generator=gen)
    return [(x[i:i + batch].to(device), y[i:i + batch].to(device)) for i in range(0, samples, batch)]


def compress(path: str, compressor: Compressor, model: torch.nn.Module, start: dict[str, np.ndarray],
             device: torch.device) -> tuple[bytes, float, float]:
    """One client's upstream compression by ``path``: the payload, seconds to symbols, seconds to code."""
    _sync(device)
    clock = time.perf_counter()
    if path == "numpy":
        local = state_arrays(model)
        update = {k: local[k] - start[k] for k in start}
    else:
        local = state_tensors(model)
        update = {k: local[k] - as_tensor(start[k], device) for k in start}
    symbols = compressor.prepare(update)  # ends on the host: the symbols are numpy
    prepared = time.perf_counter()
    payload = compressor.encode(symbols).payload
    return payload, prepared - clock, time.perf_counter() - prepared


def up_spec(name: str):
    """Preset ``name``'s upstream spec: its scheme, then its own ``up.*`` keys (as the run settings resolve
    them, without the registry, which would import Flower)."""
    layer = preset(name)
    return direction_spec({**scheme_settings("up", str(layer.get("up.scheme", ""))), **layer}, "up")


def codec_missing(name: str) -> str:
    """Why preset ``name``'s upstream codec cannot run in this installation ('' when it can)."""
    try:
        up_spec(name).build_codec().encode([np.zeros(1, np.int32)])
    except ConfigError as err:
        return str(err).splitlines()[0]
    return ""


def measure(model_name: str, presets: list[str], device: torch.device, samples: int, reps: int) -> dict:
    """Training seconds, per (preset, path) the seconds to symbols and of coding, payload sizes and checks."""
    torch.manual_seed(0)
    model = build_model(model_name, 10, (3, 32, 32)).to(device)
    manifest = ParamManifest.from_model(model)
    start = state_arrays(model)
    batches = synthetic_batches(samples, 64, device)
    settings = TrainSettings(epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4)
    specs = {name: up_spec(name) for name in presets}
    states = {(name, path): {} for name in presets for path in PATHS}
    out = {"params": manifest.num_values, "train": [], "same": {name: 0 for name in presets}, "bytes": {},
           "seconds": {(name, path): ([], []) for name in presets for path in PATHS}}
    train(model, batches[:2], settings)  # warm-up (kernels, allocator); not timed
    for rep in range(reps):
        load_arrays(model, start)
        _sync(device)
        clock = time.perf_counter()
        train(model, batches, settings)
        _sync(device)
        out["train"].append(time.perf_counter() - clock)
        for name in presets[rep % len(presets):] + presets[:rep % len(presets)]:
            payloads = {}
            for path in (PATHS if rep % 2 == 0 else PATHS[::-1]):
                compressor = Compressor(specs[name], manifest)
                if states[name, path]:
                    compressor.load_state_dict(states[name, path])
                payloads[path], q, c = compress(path, compressor, model, start, device)
                states[name, path] = compressor.state_dict()
                out["seconds"][name, path][0].append(q)
                out["seconds"][name, path][1].append(c)
            out["same"][name] += payloads["numpy"] == payloads["torch"]
            out["bytes"][name] = len(payloads["torch"])
    return out


def _device_words(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA `{torch.cuda.get_device_name(device)}`"
    return f"CPU `{platform.processor() or platform.machine()}` ({os.cpu_count()} cores, load average " \
           f"{os.getloadavg()[0]:.1f} at the start)"


def report(results: dict[str, dict], missing: dict[str, str], device: torch.device, args: argparse.Namespace,
           words: str) -> str:
    ms = lambda values: 1000 * statistics.median(values)  # noqa: E731
    frameworks = sorted({m.split(".")[0] for m in sys.modules} & set(FRAMEWORKS))
    lines = ["# Compression share of a client round: numpy path against torch path", "",
             f"Measured at commit `{source_commit()}` by `benchmarks/device_share.py --device {args.device} "
             f"--reps {args.reps} --samples {args.samples}` on {words}; torch {torch.__version__}, "
             f"Python {platform.python_version()}, "
             "one torch thread. Medians over the repetitions, training and compression interleaved in one process.",
             "Local training is one epoch of SGD (batch 64) over "
             f"{args.samples} synthetic CIFAR-shaped examples already on the device. Compression is the client's "
             "upstream path for the preset's weight update: `numpy` = the update as host numpy arrays, error "
             "feedback, sparsify and quantize on the CPU (the ClientApp's flow before; the CPU work is the same torch "
             "code on the wrapped arrays); `torch` = update, error feedback, sparsify and "
             "quantize on the device, int32 symbols to the host (the ClientApp now); both then entropy coded on the "
             "CPU. *to symbols* is everything up to symbols on the host, *coding* the entropy coder and wire format. "
             "*same payload* counts the repetitions where both paths gave identical bytes (each path carries its "
             "own error-feedback residual). The data are random, so the updates are not those of real training; "
             "the payload sizes are only what these updates give.",
             "", f"Modules of Flower, Ray or dataset loaders imported by this run: {', '.join(frameworks) or 'none'}.",
             ""]
    for name, why in missing.items():
        lines += [f"Preset `{name}` not measured: its codec is not installed here ({why}).", ""]
    if device.type != "cuda":
        lines += ["**No GPU was measured here**: these are CPU figures (training and compression on the CPU). "
                  "The issue's target (compression below 10% of a client round on an H200) needs "
                  "`benchmarks/gpu_check.sh` on a GPU machine.", ""]
    for model_name, r in results.items():
        train_ms = ms(r["train"])
        lines += [f"## {model_name} ({r['params']:,} parameters), {device.type}", "",
                  f"Local training: **{train_ms:.1f} ms** per epoch of {args.samples} examples.", "",
                  "| preset | payload bytes | path | to symbols ms | coding ms | compress ms | share of training "
                  "| same payload |", "|---|---:|---|---:|---:|---:|---:|---:|"]
        for name in r["same"]:
            for path in PATHS:
                to_symbols, coding = r["seconds"][name, path]
                q, c, total = ms(to_symbols), ms(coding), ms([a + b for a, b in zip(to_symbols, coding)])
                lines.append(f"| {name} | {r['bytes'][name]:,} | {path} | {q:.1f} | {c:.1f} | {total:.1f} | "
                             f"{100 * total / train_ms:.1f}% | {r['same'][name]}/{args.reps} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=0,
                        help="examples per local epoch (default: 5000 on a GPU, 256 on the CPU)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default="", help="results file (default: benchmarks/results/device_share[_cuda].md)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        sys.exit(f"device_share: {err}")  # one line, exit status 1
    args.samples = args.samples or (5000 if device.type == "cuda" else 256)
    words = _device_words(device)
    missing = {name: why for name in PRESETS if (why := codec_missing(name))}
    presets = [name for name in PRESETS if name not in missing]
    results = {}
    for model_name in args.models.split(","):
        results[model_name] = measure(model_name, presets, device, args.samples, args.reps)
        print(f"{model_name}: done", flush=True)
    text = report(results, missing, device, args, words) + "\n"
    suffix = "_cuda" if device.type == "cuda" else ""
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"device_share{suffix}.md")
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
