"""Federated fine-tuning of a pretrained model: accuracy against bytes (issue 19).

A source model is pretrained centrally once (`fedcomp.run.experiment.pretrain`, what
``fedcomp pretrain`` runs), then every variant fine-tunes it on the target with 10 clients,
for several seeds, as whole loopback runs (`strategies.loopback.run_loopback`: the real
strategy, ClientApp and Flower messages, no Ray):

* from scratch: FedAvg of the whole model from the seed's initialisation;
* pretrained FedAvg: every weight fine-tuned, uncompressed;
* pretrained ``fsfl-bidir``: every weight, FSFL sparse updates both ways;
* pretrained ``fsfl-partial``: filter scales, BatchNorm, biases and head only;
* head only (a linear probe) and partial without scales (BatchNorm, biases, head), both with
  ``fsfl-partial``'s compression: the ablations that show whether the scales matter.

Pairs: ``cross-domain`` (source all classes of the source data set, target digits resized to
28x28, preset ``transfer-digits28``) and ``classes`` (source classes 0-4, target 5-9 of the same
data set). The source data set is ``fashion-mnist``, or any dataset name given with --source.

    python benchmarks/transfer.py [--pairs cross-domain,classes] [--seeds 3] [--rounds 10] [--jobs 2]

Finished runs (a summary.json in their folder) and the pretrained source are reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedcomp.records.plots import plot_accuracy_vs_mb  # noqa: E402
from fedcomp.records.provenance import source_commit  # noqa: E402
from fedcomp.records.results import MB, read_rounds  # noqa: E402
from fedcomp.run.config import resolve  # noqa: E402
from fedcomp.run.presets import PRESETS  # noqa: E402

PARTIAL = PRESETS["fsfl-partial"][1]
WITHOUT_SCALES = {k: v for k, v in PARTIAL.items() if not k.startswith("fsfl.")}
VARIANTS: dict[str, tuple[bool, dict[str, Any]]] = {  # label -> (from the pretrained source, settings)
    "from scratch (FedAvg)": (False, {}),
    "pretrained FedAvg, all weights": (True, {}),
    "pretrained fsfl-bidir": (True, PRESETS["fsfl-bidir"][1]),
    "pretrained fsfl-partial": (True, PARTIAL),
    "head only (linear probe)": (True, {**WITHOUT_SCALES, "partial.groups": "head"}),
    "partial without scales": (True, {**WITHOUT_SCALES, "partial.groups": "bn,bias,head"}),
}
FULL, TARGET, ABLATIONS = "pretrained FedAvg, all weights", "pretrained fsfl-partial", (
    "head only (linear probe)", "partial without scales")


def pairs(source: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """pair -> (source settings, target settings)."""
    return {
        "cross-domain": ({"dataset": source, "model": "cnn_bn"}, dict(PRESETS["transfer-digits28"][1])),
        "classes": ({"dataset": source, "model": "cnn_bn", "data.subset": "0-4"},
                    {"dataset": source, "model": "cnn_bn", "data.subset": "5-9", "init.reset_head": True}),
    }


def pretrained(settings: dict[str, Any], epochs: int, path: Path) -> Path:
    """The source model, pretrained once (seed 0) and kept at ``path``."""
    from fedcomp.records.saved_model import save_run_model
    from fedcomp.run.experiment import pretrain

    if not path.is_file():
        config = resolve(settings)
        model = pretrain(config, epochs, lambda e, m: print(f"pretrain {path.name} epoch {e}: test acc "
                                                            f"{m['accuracy']:.4f}", flush=True))
        save_run_model(path, model, config)
    return path


def run_once(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """One whole run in this process through the loopback grid; returns its summary."""
    import torch

    from clients.client_app import app as client_app
    from strategies.loopback import run_loopback

    settings, run_dir = job
    torch.set_num_threads(1)
    if not (Path(run_dir) / "summary.json").is_file():
        run_loopback(resolve({**settings, "output.dir": run_dir}), client_app)
    return json.loads((Path(run_dir) / "summary.json").read_text())


def accuracy_at(rows: list[dict[str, Any]], budget: float) -> float | None:
    """Accuracy after the last round whose cumulative bytes stay within ``budget`` (None: none does)."""
    within = [r["accuracy"] for r in rows if r["cum_bytes_total"] <= budget]
    return within[-1] if within else None


def summarise(folders: list[Path]) -> dict[str, Any]:
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    acc = [s["final_accuracy"] for s in summaries]
    return {"acc": statistics.mean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "initial": statistics.mean(s["initial_accuracy"] for s in summaries),
            "bytes": statistics.mean(s["bytes_total"] for s in summaries), "rows": [read_rounds(f) for f in folders]}


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def report(pair: str, groups: dict[str, dict[str, Any]], args: argparse.Namespace, source_acc: str) -> list[str]:
    """The markdown section of one pair: the table, the equal-bytes comparison, the targets."""
    budget = groups[TARGET]["bytes"]
    lines = [f"## {pair}", "", source_acc, "",
             f"Budget for 'accuracy at equal bytes': `{TARGET}`'s total, {budget / MB:.4f} MB (the accuracy "
             "after the last round within it; n/a: the first round already exceeds it).", "",
             "| variant | initial acc | final acc (mean ± sd, %) | MB total | bytes vs pretrained FedAvg | "
             "acc at equal bytes (%) |", "|---|---|---|---|---|---|"]
    full = groups[FULL]
    for label, g in groups.items():
        at = [accuracy_at(rows, budget) for rows in g["rows"]]
        at_mean = statistics.mean(at) if all(a is not None for a in at) else None
        g["at_budget"] = at_mean
        lines.append(f"| {label} | {pct(g['initial'])} | {pct(g['acc'])} ± {100 * g['sd']:.1f} | "
                     f"{g['bytes'] / MB:.4f} | 1/{full['bytes'] / g['bytes']:,.0f} | {pct(at_mean)} |")
    target = groups[TARGET]
    gap = 100 * (full["acc"] - target["acc"])
    ratio = full["bytes"] / target["bytes"]
    lines += ["", "Targets (issue 19):", "",
              f"- `fsfl-partial` within 1 point of full FedAvg fine-tuning: {gap:+.1f} points behind "
              f"({pct(target['acc'])} vs {pct(full['acc'])}): **{'met' if gap <= 1 else 'missed'}**.",
              f"- at >= 1,000x fewer bytes: {ratio:,.0f}x: **{'met' if ratio >= 1000 else 'missed'}**."]
    for ablation in ABLATIONS:
        theirs, ours = groups[ablation]["at_budget"], target["at_budget"]
        verdict = "not comparable" if theirs is None else ("met" if ours > theirs else "missed")
        lines.append(f"- beats {ablation} at equal bytes: {pct(ours)} vs {pct(theirs)}: **{verdict}**.")
    lines.append("")
    curves = {}
    for label, g in groups.items():
        rows = g["rows"][0]
        curves[label] = ([r["cum_bytes_total"] / MB for r in rows], [r["accuracy"] for r in rows])
    plot = Path(args.out) / f"transfer_{pair}.png"
    plot_accuracy_vs_mb(curves, plot, f"{pair}: test accuracy vs transmitted MB (seed 0)")
    lines += [f"![accuracy vs MB]({plot.name})", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="fashion-mnist", help="source dataset name (a python: plugin works)")
    parser.add_argument("--pairs", default="cross-domain,classes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "transfer"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: contended threads are far slower
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    chosen = {name: spec for name, spec in pairs(args.source).items() if name in args.pairs.split(",")}
    common = {"num_clients": args.clients, "rounds": args.rounds, "output.checkpoint": False,
              "client.state": "memory"}
    jobs, groups, sources = [], {}, {}
    for pair, (source, target) in chosen.items():
        weights = pretrained(source, args.pretrain_epochs, runs / f"source-{pair}.pt")
        sources[pair] = weights
        for label, (from_source, settings) in VARIANTS.items():
            for seed in range(args.seeds):
                full = {**target, **settings, **common, "seed": seed,
                        **({"init.weights": str(weights)} if from_source else {})}
                digest = hashlib.sha1(json.dumps(resolve(full), sort_keys=True).encode()).hexdigest()[:10]
                folder = runs / f"{pair}-{label.split(' (')[0].replace(' ', '_').replace(',', '')}-s{seed}-{digest}"
                jobs.append((full, str(folder)))
                groups.setdefault(pair, {}).setdefault(label, []).append(folder)
    with ProcessPoolExecutor(args.jobs) as pool:
        for summary in pool.map(run_once, jobs):
            print(f"done: {summary['final_accuracy']:.4f}, {summary['bytes_total'] / MB:.4f} MB", flush=True)
    lines = ["# Transfer: federated fine-tuning of a pretrained model (issue 19)", "",
             f"Measured at commit `{source_commit()}` by `benchmarks/transfer.py` ({args.seeds} seeds, "
             f"{args.clients} clients, {args.rounds} rounds, iid, 1 local epoch; source `{args.source}` pretrained "
             f"centrally for {args.pretrain_epochs} epochs, seed 0; model `cnn_bn`). Bytes: payload bytes, "
             "both directions, all rounds; pretrained FedAvg's bytes are the reference for the ratio.", ""]
    for pair, variants in groups.items():
        source_acc = f"Source `{sources[pair].name}`: pretrained on {chosen[pair][0]}."
        lines += report(pair, {label: summarise(f) for label, f in variants.items()}, args, source_acc)
    (out / "transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
