"""Federated fine-tuning of a pretrained model: accuracy against bytes (issue 19).

A source model is pretrained centrally once per pair (`fedcomp.run.experiment.pretrain`, what
``fedcomp pretrain`` runs), then every arm fine-tunes it on the target for several seeds, as whole
loopback runs (`strategies.loopback.run_loopback`: the real strategy, ClientApp and Flower
messages, no Ray):

* from scratch: FedAvg of the whole model from the seed's initialisation;
* pretrained FedAvg: every weight fine-tuned, uncompressed;
* pretrained ``fsfl-bidir``: every weight, FSFL sparse updates both ways;
* pretrained ``fsfl-partial``: filter scales, BatchNorm, biases and head only;
* head only (a linear probe) and partial without scales (BatchNorm, biases, head), both with
  ``fsfl-partial``'s compression: the ablations that show whether the scales matter.

Equal bytes: the three partial arms are also run at another compression level (`LEVELS`, `SWEPT`:
the top-k share of the head's weights and the quantizer step, both ways), so each has a curve of final
accuracy against total bytes; per seed, each curve is interpolated (in log bytes) at the other
arm's points that fall inside its range, and the paired differences get a 95% CI.

Pairs (each a workload preset that composes with the compression presets):
``cross-domain`` (source: all of Fashion-MNIST; target ``transfer-digits28``, digits resized to
28x28) and ``classes`` (source: Fashion-MNIST classes 0-4; target ``transfer-fmnist-classes``,
classes 5-9).

    python benchmarks/transfer.py [--pairs cross-domain,classes] [--seeds 3] [--sweep cross-domain] [--jobs 1]

Finished runs (a summary.json in their folder) and the pretrained sources are reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedcomp.analysis.stats import Interval, mean_interval, paired_difference  # noqa: E402
from fedcomp.records.provenance import source_commit  # noqa: E402
from fedcomp.records.results import MB, read_rounds  # noqa: E402
from fedcomp.run.config import resolve  # noqa: E402
from fedcomp.run.presets import PRESETS  # noqa: E402

PARTIAL = PRESETS["fsfl-partial"][1]
WITHOUT_SCALES = {k: v for k, v in PARTIAL.items() if not k.startswith("fsfl.")}
SCRATCH, FULL, TARGET = "from scratch (FedAvg)", "pretrained FedAvg, all weights", "pretrained fsfl-partial"
ABLATIONS = ("head only (linear probe)", "partial without scales")
ARMS: dict[str, tuple[bool, dict[str, Any]]] = {  # label -> (from the pretrained source, settings)
    SCRATCH: (False, {}),
    FULL: (True, {}),
    "pretrained fsfl-bidir": (True, PRESETS["fsfl-bidir"][1]),
    TARGET: (True, PARTIAL),
    ABLATIONS[0]: (True, {**WITHOUT_SCALES, "partial.groups": "head"}),
    ABLATIONS[1]: (True, {**WITHOUT_SCALES, "partial.groups": "bn,bias,head"}),
}
# compression levels of the swept arms; the 1-d tensors (biases, BatchNorm, scales) are never sparsified,
# so the top-k share acts on the head's weight matrix and the step on everything
LEVELS: dict[str, dict[str, Any]] = {
    "coarser": {"up.fraction": 0.03, "down.fraction": 0.03, "up.qp": -24, "down.qp": -24, "fsfl.scale_qp": -32},
    "preset": {},
    "finer": {"up.fraction": 0.3, "down.fraction": 0.3, "up.qp": -40, "down.qp": -40, "fsfl.scale_qp": -48},
}
# the levels each swept arm runs: toward the other arms' bytes (head only sends the least, fsfl-partial
# and the scale-free partial ~3.5 and ~4 times more), so that every pair of curves overlaps
SWEPT: dict[str, tuple[str, ...]] = {TARGET: ("coarser", "preset"), ABLATIONS[0]: ("preset", "finer"),
                                     ABLATIONS[1]: ("coarser", "preset")}
PAIRS: dict[str, tuple[dict[str, Any], str]] = {  # pair -> (source settings, target workload preset)
    "cross-domain": ({"dataset": "fashion-mnist", "model": "cnn_bn"}, "transfer-digits28"),
    "classes": ({"dataset": "fashion-mnist", "model": "cnn_bn", "data.subset": "0-4"}, "transfer-fmnist-classes"),
}


def pretrained(settings: dict[str, Any], epochs: int, path: Path) -> tuple[Path, str]:
    """The source model, pretrained once (seed 0) and kept at ``path``; and its test accuracy, as logged."""
    from fedcomp.records.saved_model import save_run_model
    from fedcomp.run.experiment import pretrain

    log = path.with_suffix(".log")
    if not path.is_file():
        config = resolve(settings)
        lines = []

        def report(epoch: int, metrics: dict[str, float]) -> None:
            lines.append(f"epoch {epoch}: test acc {metrics['accuracy']:.4f}")
            print(f"pretrain {path.name} {lines[-1]}", flush=True)

        model = pretrain(config, epochs, report)
        save_run_model(path, model, config)
        log.write_text("\n".join(lines) + "\n")
    return path, log.read_text().strip().splitlines()[-1] if log.is_file() else "accuracy not logged"


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


def folder_name(pair: str, label: str, level: str, seed: int, settings: dict[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(resolve(settings), sort_keys=True).encode()).hexdigest()[:10]
    arm = label.split(" (")[0].replace(" ", "_").replace(",", "")
    return f"{pair}-{arm}-{level}-s{seed}-{digest}"


def interpolate(curve: list[tuple[float, float]], at: float) -> float:
    """Accuracy of a (bytes, accuracy) curve at ``at`` bytes (inside its range), linear in log bytes."""
    points = sorted(curve)
    logs = [math.log(b) for b, _ in points]
    return float(np.interp(math.log(at), logs, [a for _, a in points]))


def equal_bytes(ours: dict[int, list[tuple[float, float]]], theirs: dict[int, list[tuple[float, float]]],
                budgets: int = 3) -> list[tuple[float, Interval, Interval, Interval]]:
    """Paired comparisons of two arms' per-seed curves at matched bytes.

    The budgets are ``budgets`` points spaced evenly in log bytes over the range every seed's curve of
    both arms covers (none when those ranges do not overlap); there, per seed, both curves are
    interpolated. Returns ``(bytes, ours, theirs, ours - theirs)`` per budget.
    """
    seeds = sorted(set(ours) & set(theirs))
    curves = [c[s] for c in (ours, theirs) for s in seeds]
    low, high = max(min(b for b, _ in c) for c in curves), min(max(b for b, _ in c) for c in curves)
    if low > high:
        return []
    out = []
    for budget in sorted({float(b) for b in np.geomspace(low, high, budgets)}):
        a = {s: interpolate(ours[s], budget) for s in seeds}
        b = {s: interpolate(theirs[s], budget) for s in seeds}
        out.append((budget, mean_interval(list(a.values())), mean_interval(list(b.values())),
                    paired_difference(a, b)))
    return out


def pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def ci(interval: Interval) -> str:
    return f"{pct(interval.mean)} [{pct(interval.low)}, {pct(interval.high)}]"


def plot(pair: str, arms: dict[str, list[Path]], sweep: dict[str, dict[str, list[dict]]], path: Path) -> None:
    """Left: mean accuracy against mean cumulative MB per round, band min..max over seeds.
    Right: the swept arms' final accuracy against total MB per level, mean with min..max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if sweep else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.4), dpi=110, squeeze=False)
    ax = axes[0][0]
    for label, folders in arms.items():
        rows = [read_rounds(f) for f in folders]
        mb = np.mean([[r["cum_bytes_total"] / MB for r in rs] for rs in rows], axis=0)
        acc = np.array([[r["accuracy"] for r in rs] for rs in rows])
        ax.plot(mb, acc.mean(0), label=label)
        ax.fill_between(mb, acc.min(0), acc.max(0), alpha=0.2)
    ax.set_xscale("log")
    ax.set(xlabel="cumulative MB (payload, up + down)", ylabel="test accuracy",
           title=f"{pair}: per round, band = min..max over seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if sweep:
        ax = axes[0][1]
        for label, levels in sweep.items():
            ordered = sorted(levels.values(), key=lambda s: statistics.mean(x["bytes_total"] for x in s))
            mb = [statistics.mean(x["bytes_total"] for x in s) / MB for s in ordered]
            acc = [[x["final_accuracy"] for x in s] for s in ordered]
            mean = [statistics.mean(a) for a in acc]
            bars = [[m - min(a) for m, a in zip(mean, acc)], [max(a) - m for m, a in zip(mean, acc)]]
            ax.errorbar(mb, mean, yerr=bars, marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set(xlabel="total MB (payload, up + down)", ylabel="final test accuracy",
               title=f"{pair}: compression levels, bars = min..max over seeds")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(pair: str, arms: dict[str, list[Path]], sweep: dict[str, dict[str, list[dict]]], source: str,
           out: Path) -> list[str]:
    """The markdown section of one pair: the table of the six arms, the equal-bytes comparison, the targets."""
    summaries = {label: [json.loads((f / "summary.json").read_text()) for f in folders]
                 for label, folders in arms.items()}
    full_bytes = statistics.mean(s["bytes_total"] for s in summaries[FULL])
    rounds = summaries[FULL][0]["rounds"]
    lines = [f"## {pair} (`{PAIRS[pair][1]}`, {rounds} rounds)", "", source, "",
             "| arm | initial acc (%) | final acc, mean [95% CI] (%) | vs pretrained FedAvg, paired (points) "
             "| MB total | bytes vs pretrained FedAvg |", "|---|---|---|---|---|---|"]
    final = {label: {i: s["final_accuracy"] for i, s in enumerate(group)} for label, group in summaries.items()}
    for label, group in summaries.items():
        size = statistics.mean(s["bytes_total"] for s in group)
        versus = "—" if label == FULL else ci(paired_difference(final[label], final[FULL]))
        lines.append(f"| {label} | {pct(statistics.mean(s['initial_accuracy'] for s in group))} | "
                     f"{ci(mean_interval(list(final[label].values())))} | {versus} | {size / MB:.4f} | "
                     f"1/{full_bytes / size:,.0f} |")
    gap = paired_difference(final[FULL], final[TARGET])
    ratio = full_bytes / statistics.mean(s["bytes_total"] for s in summaries[TARGET])
    lines += ["", "Targets (issue 19):", "",
              f"- `fsfl-partial` within 1 point of full FedAvg fine-tuning: {ci(gap)} points behind: "
              f"**{'met' if gap.mean <= 0.01 else 'missed'}**.",
              f"- at >= 1,000x fewer bytes: {ratio:,.0f}x: **{'met' if ratio >= 1000 else 'missed'}**."]
    if sweep:
        curves = {label: {seed: [(runs[seed]["bytes_total"], runs[seed]["final_accuracy"]) for runs in levels.values()]
                          for seed in range(len(next(iter(levels.values()))))} for label, levels in sweep.items()}
        levels = "; ".join(f"{label}: {', '.join(SWEPT[label])}" for label in SWEPT)
        lines += ["", f"Equal bytes: final accuracy of each swept arm at its compression levels ({levels}; "
                  "`LEVELS` in the script), interpolated per seed in log bytes at three budgets spanning "
                  "the range both arms cover in every seed; difference `fsfl-partial` minus the ablation, "
                  "paired over seeds, 95% CI.", "",
                  "| ablation | MB | fsfl-partial (%) | ablation (%) | difference (points) |", "|---|---|---|---|---|"]
        for ablation in ABLATIONS:
            matched = equal_bytes(curves[TARGET], curves[ablation])
            for budget, ours, theirs, diff in matched:
                lines.append(f"| {ablation} | {budget / MB:.4f} | {ci(ours)} | {ci(theirs)} | {ci(diff)} |")
            if not matched:
                lines.append(f"| {ablation} | no budget inside both ranges | | | |")
            verdict = ("not comparable" if not matched else "met" if all(d.low > 0 for *_, d in matched)
                       else "missed" if all(d.high < 0 for *_, d in matched) else "not shown (a CI spans 0 or "
                       "the sign changes)")
            lines.append(f"| **beats {ablation} at equal bytes** | | | | **{verdict}** |")
    name = f"transfer_{pair}.png"
    plot(pair, arms, sweep, out / name)
    lines += ["", f"![accuracy vs MB]({name})", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="cross-domain,classes")
    parser.add_argument("--sweep", default="cross-domain", help="pairs whose partial arms are run at every level")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=0, help="rounds of every run (0: the workload preset's)")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "transfer"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: contended threads are far slower
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [p for p in args.pairs.split(",") if p]
    common = {"output.checkpoint": False, "client.state": "memory", **({"rounds": args.rounds} if args.rounds else {})}
    jobs, arms, sweeps, sources = [], {}, {}, {}
    for pair in chosen:
        source_settings, workload = PAIRS[pair]
        weights, accuracy = pretrained(source_settings, args.pretrain_epochs, runs / f"source-{pair}.pt")
        sources[pair] = (f"Source `{weights.name}`: `fedcomp pretrain` on {source_settings}, {args.pretrain_epochs} "
                         f"epochs, seed 0 (last {accuracy}).")
        for label, (from_source, settings) in ARMS.items():
            swept = pair in args.sweep.split(",") and label in SWEPT
            for level in (SWEPT[label] if swept else ("preset",)):
                knobs = LEVELS[level]
                for seed in range(args.seeds):
                    full = {**PRESETS[workload][1], **settings, **knobs, **common, "seed": seed,
                            **({"init.weights": str(weights)} if from_source else {})}
                    folder = runs / folder_name(pair, label, level, seed, full)
                    jobs.append((full, str(folder)))
                    if level == "preset":
                        arms.setdefault(pair, {}).setdefault(label, []).append(folder)
                    if swept:
                        sweeps.setdefault(pair, {}).setdefault(label, {}).setdefault(level, []).append(folder)
    jobs.sort(key=lambda job: job[0]["seed"])  # seed by seed: a run cut short leaves whole seeds to report
    with ProcessPoolExecutor(args.jobs) as pool:
        for (_, folder), summary in zip(jobs, pool.map(run_once, jobs)):
            print(f"done {Path(folder).name}: {summary['final_accuracy']:.4f}, "
                  f"{summary['bytes_total'] / MB:.4f} MB", flush=True)
    lines = ["# Transfer: federated fine-tuning of a pretrained model (issue 19)", "",
             f"Measured at commit `{source_commit()}` by `benchmarks/transfer.py --pairs {args.pairs} --sweep "
             f"{args.sweep} --seeds {args.seeds}` ({args.seeds} seeds: 0..{args.seeds - 1}, paired across arms; "
             "model `cnn_bn`; the rest as the target's workload preset says). Bytes: payload bytes, both "
             "directions, all rounds; pretrained FedAvg's bytes are the reference for the ratio. CIs: Student-t, "
             "95%, over seeds.", ""]
    for pair in chosen:
        sweep = {label: {level: [json.loads((f / "summary.json").read_text()) for f in folders]
                         for level, folders in levels.items()} for label, levels in sweeps.get(pair, {}).items()}
        lines += report(pair, arms[pair], sweep, sources[pair], out)
    (out / "transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
