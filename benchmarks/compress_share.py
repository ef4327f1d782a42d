"""The time compression adds to a client round, as a share of its local training time.

One process, one thread, interleaved repetitions, CPU time (``time.thread_time``, so that other
processes on a loaded machine do not inflate either figure) and medians: per workload (``digits``,
the default, and ``fmnist``), a client's local training (1 epoch of SGD on its partition) against
the client's whole upstream compression path as the ClientApp runs it (update = local - global,
ECQx's LRP relevances where the preset uses ECQx, error feedback, sparsify, quantize, entropy code,
pack, the sender's state), for each compressed preset and the frontier's uniform + EF point. FSFL's
scales pass is training (as the ClientApp counts it), not compression.

Each measurement is kept in ``compress_share.json`` under the commit it measured, and the report puts
the last two commits side by side (before and after a change to the compression path):

    python benchmarks/compress_share.py [--reps 31] [--workloads digits,fmnist]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedcomp.compress.params import load_arrays, state_arrays  # noqa: E402
from fedcomp.exchange.updates import UpdateSettings  # noqa: E402
from fedcomp.local.relevance import accumulated_relevance  # noqa: E402
from fedcomp.local.scaling import is_scale  # noqa: E402
from fedcomp.local.training import TrainSettings, train  # noqa: E402
from fedcomp.records.provenance import source_commit  # noqa: E402
from fedcomp.run.config import resolve  # noqa: E402
from fedcomp.run.experiment import client_loader, run_model  # noqa: E402
from fedcomp.run.presets import COMPRESSIONS, compose  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# every compression preset, and the point that leads the digits frontier without FSFL (comm_savings.md)
POINTS = {name: compose([name]) for name in COMPRESSIONS if name != "fedavg"}
POINTS["uniform+EF qp -16"] = {f"{d}.{k}": v for d in ("up", "down")
                               for k, v in (("scheme", "uniform-ans"), ("qp", -16), ("error_feedback", True))}
WORKLOADS = ("digits", "fmnist")


def cpu_seconds(fn) -> float:
    """CPU seconds of this thread that ``fn()`` takes."""
    clock = time.thread_time()
    fn()
    return time.thread_time() - clock


def send(model, start: dict, loader, client: tuple, state: dict, lrp_s: list[float]) -> dict:
    """The ClientApp's upstream path for one client's trained ``model``; returns the sender's new state."""
    settings, channel, sent = client
    local = state_arrays(model)
    update = {k: local[k] - start[k] for k in sent}
    relevance = None
    if settings.up.quantizer == "ecqx":
        clock = time.thread_time()
        relevance = accumulated_relevance(model, loader, settings.up.relevance_batch)
        lrp_s.append(time.thread_time() - clock)
    return channel.encode(update, state, relevance=relevance)[1]


def measure(workload: str, reps: int) -> dict:
    """Median local-training and per-point compression CPU seconds on one client of ``workload``."""
    config = resolve(compose([workload]))
    model = run_model(config)
    start = state_arrays(model)
    loader = client_loader(config, 0, 1)
    clients = {}
    for name, settings in POINTS.items():
        point = resolve({**compose([workload]), **settings})
        update_settings = UpdateSettings.from_config(point)
        point_model = run_model(point)  # FSFL's models carry scales; they travel in the second stage
        manifest = update_settings.manifest(point_model)
        sent = [k for k in update_settings.sent_names(point_model, manifest) if not is_scale(k)]
        clients[name] = (update_settings, update_settings.channel("up", manifest, 0), sent)
    train_s: list[float] = []
    compress_s: dict[str, list[float]] = {name: [] for name in POINTS}
    lrp_s: list[float] = []
    states: dict[str, dict] = {name: {} for name in POINTS}
    names = list(POINTS)
    for rep in range(reps):
        load_arrays(model, start)
        train_s.append(cpu_seconds(lambda: train(model, loader, TrainSettings.from_config(config))))
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # each goes first in turn
            clock = time.thread_time()
            states[name] = send(model, start, loader, clients[name], states[name], lrp_s)
            compress_s[name].append(time.thread_time() - clock)
    return {"examples": len(loader.dataset), "model": config["model"], "reps": reps,
            "train_ms": 1000 * statistics.median(train_s),
            "compress_ms": {name: 1000 * statistics.median(v) for name, v in compress_s.items()},
            "lrp_ms": 1000 * statistics.median(lrp_s) if lrp_s else None,
            "load": round(os.getloadavg()[0], 1)}


def render(history: dict) -> str:
    """The report: per workload, the last two measured commits side by side."""
    commits = list(history)[-2:]
    lines = ["# Compression time against local training time", "",
             "Written by `benchmarks/compress_share.py`: one client, one torch thread, CPU time of the thread "
             "(`time.thread_time`, so the machine's other load does not count), medians over interleaved "
             "repetitions, the points' order rotated each repetition. Compression is the ClientApp's whole upstream "
             "path: the update, ECQx's LRP relevances (where used), error feedback, sparsification, quantization, "
             "entropy coding, the payload record and the sender's state. Share = compression / local training "
             "(1 epoch). Target: below 10%. Two commits are measured in separate processes at different times: "
             "the CPU time of unchanged code (local training, the LRP pass) moves by up to ~20% between them on this "
             "shared machine, so compare the shares, and only differences larger than that.", ""]
    for workload in WORKLOADS:
        runs = [(c, history[c][workload]) for c in commits if workload in history[c]]
        if not runs:
            continue
        first = runs[-1][1]
        lines += [f"## {workload}", "", f"One client: {first['examples']} examples, `{first['model']}`. Local "
                  "training per commit: " + "; ".join(f"`{c}`: {r['train_ms']:.1f} ms ({r['reps']} reps, load "
                                                     f"{r['load']})" for c, r in runs) + ".", "",
                  "| point | " + " | ".join(f"compress ms `{c}` | share `{c}`" for c, _ in runs) + " |",
                  "|---|" + "---:|---:|" * len(runs)]
        for name in POINTS:
            cells = []
            for _, r in runs:
                ms = r["compress_ms"].get(name)
                cells += ["-", "-"] if ms is None else [f"{ms:.2f}", f"{100 * ms / r['train_ms']:.1f}%"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lrp = [(c, r["lrp_ms"]) for c, r in runs if r.get("lrp_ms")]
        if lrp:
            lines += ["", "Of ECQx's compression, its LRP pass (a forward and a relevance backward pass over "
                      "`up.relevance_batch` examples) takes " + "; ".join(f"`{c}`: {ms:.2f} ms" for c, ms in lrp)
                      + " per round."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=31)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--out", default=str(RESULTS / "compress_share.md"))
    args = parser.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if set(workloads) - set(WORKLOADS):
        raise SystemExit(f"unknown workload(s); choose from {', '.join(WORKLOADS)}")
    torch.set_num_threads(1)
    store = Path(args.out).with_suffix(".json")
    history = json.loads(store.read_text()) if store.is_file() else {}
    commit = source_commit()
    measured = history.pop(commit, {})  # re-measuring a commit moves it last
    for workload in workloads:
        measured[workload] = measure(workload, args.reps)
        print(workload, json.dumps(measured[workload]), flush=True)
    history[commit] = measured
    store.write_text(json.dumps(history, indent=1) + "\n")
    text = render(history)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
