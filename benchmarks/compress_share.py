"""The time compression adds to a client round, as a share of its local training time.

One process, one thread, interleaved repetitions, so that both figures see the same machine
load: a client's local training (1 epoch of SGD on its digits partition, the `cnn`, the
default workload) against the client's whole upstream compression path as the ClientApp
runs it (update = local - global, error feedback, sparsify, quantize, entropy code, pack),
for each compressed preset. Medians over repetitions.

    python benchmarks/compress_share.py [--reps 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedcomp.run.config import resolve  # noqa: E402
from fedcomp.run.experiment import client_loader, run_model  # noqa: E402
from fedcomp.compress.params import load_arrays, state_arrays  # noqa: E402
from fedcomp.run.presets import preset  # noqa: E402
from fedcomp.records.provenance import source_commit  # noqa: E402
from fedcomp.local.training import TrainSettings, train  # noqa: E402
from fedcomp.exchange.updates import UpdateSettings  # noqa: E402

PRESETS = ["topk-ef", "stc", "nnc", "fsfl", "fsfl-bidir", "ecqx", "ec2t"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compress_share.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    commit = source_commit()
    config = resolve()
    model = run_model(config)
    start = state_arrays(model)
    loader = client_loader(config, 0, 1)
    channels = {}
    for name in PRESETS:
        settings = UpdateSettings.from_config(resolve(preset(name)))
        channels[name] = settings.channel("up", settings.manifest(model), 0)
    train_s: list[float] = []
    compress_s: dict[str, list[float]] = {name: [] for name in PRESETS}
    states: dict[str, dict] = {name: {} for name in PRESETS}
    for rep in range(args.reps):
        load_arrays(model, start)
        clock = time.perf_counter()
        train(model, loader, TrainSettings.from_config(config))
        train_s.append(time.perf_counter() - clock)
        for name in PRESETS[rep % len(PRESETS):] + PRESETS[:rep % len(PRESETS)]:  # each goes first in turn
            channel = channels[name]
            clock = time.perf_counter()
            local = state_arrays(model)
            update = {k: local[k] - start[k] for k in start}
            _, states[name] = channel.encode(update, states[name])
            compress_s[name].append(time.perf_counter() - clock)
    train_median = statistics.median(train_s)
    lines = ["# Compression time against local training time", "",
             f"Measured at commit `{commit}` by `benchmarks/compress_share.py` ({args.reps} interleaved repetitions, "
             "one torch thread, medians, the presets' order rotated each repetition; load average "
             f"{os.getloadavg()[0]:.1f} on the machine's 2 cores at the start). A client of the "
             f"default workload: 1 epoch of SGD over {len(loader.dataset)} digits examples with the `cnn` "
             f"takes **{1000 * train_median:.1f} ms**. Compression is the ClientApp's upstream path: the update, "
             "error feedback, sparsification, quantization, entropy coding and the payload record. ECQx's LRP "
             "pass is not included here (it is in `quant_tradeoff.md`).", "",
             "| preset | compress ms (median) | share of local training |", "|---|---:|---:|"]
    for name in PRESETS:
        median = statistics.median(compress_s[name])
        lines.append(f"| {name} | {1000 * median:.2f} | {100 * median / train_median:.1f}% |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
