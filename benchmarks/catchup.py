"""Compression under partial participation (issue 18): catch-up bytes, stale error feedback, the flagship.

The cross-device workload: Fashion-MNIST, a LeNet-5-sized CNN, 100 clients of 600 examples,
10 sampled per round. Every run is a whole fedcomp run through the loopback grid (real
strategy, ClientApp and Flower messages; no Ray), kept in its own folder (its per-client bytes are read back).

* main: FedAvg and the flagship (`FLAGSHIP` of `fedcomp.run.presets`) on paired seeds: final accuracy, the flagship's
  difference to FedAvg (mean and 95% confidence interval over seeds), MB up and down, the
  ratio of total bytes, and downstream against upstream bytes per round;
* catch-up bytes against rounds missed, from every training message of the flagship runs
  (a client sampled in round r that last trained in round r - 1 - m missed m rounds): the
  median per m, a plot, and the ratio of m = 10 to m = 1;
* stale error feedback: how old a residual is when it is applied (rounds since the client
  last trained), and in ``catchup_ef.md`` what each ``sync.stale_residual`` policy, and no upstream
  error feedback, does to the flagship's accuracy and bytes (paired seeds, ``--ef-rounds`` rounds,
  differences to ``keep`` with 95% confidence intervals);
* the flagship's settings under full participation on digits (the default workload).

    python benchmarks/catchup.py [--seeds 3] [--rounds 50] [--ef-rounds 30] [--jobs 2] [--dataset fashion-mnist]

``--dataset``/``--model`` take any name fedcomp accepts (``python:module:function`` too).
Finished runs (a summary.json in their folder) are reused. ``catchup_ef.md`` is written once the
error-feedback runs have finished (``--only ef-`` runs only those), ``catchup.md`` once the others have.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedcomp.analysis.stats import mean_interval, paired_difference  # noqa: E402
from fedcomp.errors import DivergedError  # noqa: E402
from fedcomp.records.provenance import source_commit  # noqa: E402
from fedcomp.records.results import MB, read_diverged, read_rounds  # noqa: E402
from fedcomp.run.config import resolve  # noqa: E402
from fedcomp.run.presets import FLAGSHIP, FMNIST_ROUNDS, compose  # noqa: E402

EF_POLICIES = ["keep", "decay:0.9", "reset:3", "no EF"]  # `sync.stale_residual` values, and no upstream EF


def cross_device(name: str, dataset: str, model: str, rounds: int) -> dict[str, Any]:
    """Compression preset ``name`` on the `fmnist` workload (100 clients, 10 a round), ``rounds`` rounds."""
    return {**compose(["fmnist", name]), "dataset": dataset, "model": model, "rounds": rounds}


def folder(runs: Path, label: str, settings: dict[str, Any]) -> Path:
    digest = hashlib.sha1(json.dumps(resolve(settings), sort_keys=True).encode()).hexdigest()[:10]
    return runs / f"{label.replace(' ', '_').replace(':', '')}-{digest}"


def catch_up_points(run_dir: Path) -> list[tuple[int, int]]:
    """``(rounds missed, catch-up payload bytes)`` of every training message after a client's first."""
    last: dict[int, int] = {}
    points = []
    for row in read_rounds(run_dir):
        for client in row["clients"]:
            pid = client["partition_id"]
            if pid in last:
                points.append((row["round"] - last[pid] - 1, int(client["bytes_down"])))
            last[pid] = row["round"]
    return points


def residual_ages(run_dir: Path) -> list[int]:
    """Rounds between a client's residual being formed and applied, over every return of a client."""
    return [missed + 1 for missed, _ in catch_up_points(run_dir)]


def update_magnitudes(config: dict[str, Any], rounds: int = 5) -> list[tuple[str, int, float, float, float, float]]:
    """Per tensor of one client's one-round update after ``rounds`` rounds of plain FedAvg (10 sampled
    clients a round, the run's own local training): size, median |u|, 99th percentile, and the share of
    entries a uniform quantizer with qp -12 or -20 sends at once (|u| above half its step)."""
    import numpy as np
    import torch

    from fedcomp.compress.params import load_arrays, state_arrays
    from fedcomp.compress.quant.tensor import qp_step
    from fedcomp.local.training import TrainSettings, train
    from fedcomp.run.experiment import client_loader, run_model

    config = resolve(config)
    torch.manual_seed(int(config["seed"]))
    model = run_model(config)
    weights = state_arrays(model)
    rng = np.random.default_rng(0)
    for r in range(1, rounds + 1):
        updates = []
        for pid in rng.choice(int(config["num_clients"]), 10, replace=False):
            load_arrays(model, weights)
            train(model, client_loader(config, int(pid), r), TrainSettings.from_config(config))
            updates.append({k: v - weights[k] for k, v in state_arrays(model).items()})
        weights = {k: v + np.mean([u[k] for u in updates], axis=0) for k, v in weights.items()}
    rows = []
    for name in weights:
        u = np.abs(np.concatenate([x[name].ravel() for x in updates]))
        rows.append((name, weights[name].size, float(np.median(u)), float(np.quantile(u, 0.99)),
                     float(np.mean(u > qp_step(-12) / 2)), float(np.mean(u > qp_step(-20) / 2))))
    return rows


def run_job(job: tuple[str, dict[str, Any], str]) -> None:
    """One whole run on the loopback grid into its folder, unless the folder has its summary already; a run
    that stops as diverged is a result (its folder records the round), not a failure."""
    import logging

    import torch

    from clients.client_app import app as client_app
    from strategies.loopback import run_loopback

    label, settings, path = job
    if summary(Path(path)) is not None:
        return
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        run_loopback(resolve(settings, {"output.dir": path, "output.checkpoint": False, "preset": ""}), client_app)
    except DivergedError:
        pass
    print(f"\n{label}: {summary(Path(path))}", flush=True)


def summary(run_dir: Path) -> dict[str, Any] | None:
    """Final accuracy, MB up/down/total and the median downstream/upstream bytes per round (acc NaN if diverged);
    None when the run has not finished."""
    diverged = read_diverged(run_dir)
    if diverged is not None:
        return {"acc": float("nan"), "up": float("nan"), "down": float("nan"), "total": float("nan"),
                "down_per_up": float("nan"), "diverged": diverged.round}
    if not (run_dir / "summary.json").is_file():
        return None
    s = json.loads((run_dir / "summary.json").read_text())
    rows = read_rounds(run_dir)
    return {"acc": s["final_accuracy"], "up": s["bytes_up"] / MB, "down": s["bytes_down"] / MB,
            "total": s["bytes_total"] / MB,
            "down_per_up": statistics.median(r["bytes_down"] / r["bytes_up"] for r in rows[1:] if r["bytes_up"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=FMNIST_ROUNDS)
    parser.add_argument("--ef-rounds", type=int, default=30, help="rounds of the error-feedback table's runs")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "catchup"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="run only the runs whose label starts with PREFIX (e.g. digits-; two processes can "
                             "split the runs); the report is written once every run has finished")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    args = parser.parse_args()
    overrides = {k: json.loads(v) if v[:1] in "-0123456789[{tf" else v
                 for k, v in (item.split("=", 1) for item in args.set)}
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, dict[str, Any], str]] = []

    def add(label: str, settings: dict[str, Any]) -> Path:
        settings = {**settings, **overrides}
        path = folder(runs, label, settings)
        if all(job[2] != str(path) for job in jobs):
            jobs.append((label, settings, str(path)))
        return path

    seeds = range(args.seeds)
    main_runs = {name: [add(f"{name}-s{s}", {**cross_device(name, args.dataset, args.model, args.rounds),
                                             "seed": s}) for s in seeds]
                 for name in ("fedavg", FLAGSHIP)}
    digits = {name: [add(f"digits-{name}-s{s}", {**compose(["digits", name]), "seed": s}) for s in seeds]
              for name in ("fedavg", FLAGSHIP)}
    flagship_ef = cross_device(FLAGSHIP, args.dataset, args.model, args.ef_rounds)
    ef_runs = {policy: [add(f"ef-{policy}-s{s}-r{args.ef_rounds}",
                            {**flagship_ef, "seed": s, **({"up.error_feedback": False} if policy == "no EF"
                                                          else {"sync.stale_residual": policy})})
                        for s in seeds] for policy in EF_POLICIES}

    started = time.perf_counter()
    todo = [job for job in jobs if not args.only or job[0].startswith(tuple(args.only))]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, _ in enumerate(pool.map(run_job, todo), 1):
            print(f"\r{i}/{len(todo)} runs, {time.perf_counter() - started:.0f} s", end="", flush=True)
    print()
    if all(summary(r) is not None for rs in ef_runs.values() for r in rs):
        text = ef_report(args, ef_runs)
        (out / "catchup_ef.md").write_text(text)
        print(text)
    needed = [*main_runs["fedavg"], *main_runs[FLAGSHIP], *digits["fedavg"], *digits[FLAGSHIP]]
    missing = [job[0] for job in jobs if Path(job[2]) in needed and summary(Path(job[2])) is None]
    if missing:
        print(f"no report yet: {len(missing)} runs have not finished ({', '.join(missing)})")
        return
    text = report(args, main_runs, digits, out, time.perf_counter() - started)
    (out / "catchup.md").write_text(text)
    print(text)


def paired(base: list[Path], other: list[Path]) -> tuple[dict, dict, tuple[float, float], float]:
    a, b = [summary(r) for r in base], [summary(r) for r in other]
    d = mean_interval([y["acc"] - x["acc"] for x, y in zip(a, b)])
    diff = (d.mean, d.half if d.n > 1 else 0.0)
    ratio = statistics.mean(x["total"] for x in a) / statistics.mean(y["total"] for y in b)
    return a, b, diff, ratio


def report(args, main_runs: dict, digits: dict, out: Path, seconds: float) -> str:
    lines = ["# Compression under partial participation (issue 18)", "",
             f"Measured at commit `{source_commit()}` by `benchmarks/catchup.py` on a shared, heavily loaded 2-core "
             f"machine (runs are kept in `{Path(args.runs).name}/`, reused; the report took {seconds / 60:.0f} min). "
             f"Cross-device workload: {args.dataset}, {args.model}, 100 clients "
             f"(600 examples each), 10 sampled per round, **{args.rounds} rounds**"
             f"{' (fewer than the fmnist preset: the machine is shared)' if args.rounds < FMNIST_ROUNDS else ''}, "
             f"{args.seeds} paired seeds. MB are payload bytes (10^6 B).", ""]
    main_runs_settings = json.loads((main_runs[FLAGSHIP][0] / "config.json").read_text())
    fedavg, flag, diff, ratio = paired(main_runs["fedavg"], main_runs[FLAGSHIP])
    lines += ["## The flagship against FedAvg", "",
              "| scheme | final acc (mean) | per seed | MB up | MB down | MB total | downstream / upstream "
              "bytes per round (median) |", "|---|---:|---|---:|---:|---:|---:|"]
    for name, rows in (("fedavg", fedavg), (FLAGSHIP, flag)):
        mean = {key: statistics.mean(r[key] for r in rows) for key in ("acc", "up", "down", "total", "down_per_up")}
        lines.append(f"| {name} | {mean['acc']:.4f} | {', '.join(format(r['acc'], '.4f') for r in rows)} | "
                     f"{mean['up']:.3f} | {mean['down']:.3f} | {mean['total']:.3f} | {mean['down_per_up']:.2f} |")
    down_up = statistics.mean(r["down_per_up"] for r in flag)
    lines += ["", f"Flagship minus FedAvg: **{100 * diff[0]:+.2f} points** (95% CI ±{100 * diff[1]:.2f}), "
              f"**{ratio:.0f}x** fewer total bytes (target: >= 100x within 1 point); downstream/upstream bytes per "
              f"round {down_up:.2f} (median over rounds, mean over seeds), "
              f"{sum(r['down'] for r in flag) / sum(r['up'] for r in flag):.2f} over whole runs (target <= 3).", ""]

    points = [p for r in main_runs[FLAGSHIP] for p in catch_up_points(r)]
    by_missed: dict[int, list[int]] = {}
    for missed, size in points:
        by_missed.setdefault(missed, []).append(size)
    medians = {m: statistics.median(v) for m, v in sorted(by_missed.items())}
    plot_catch_up(points, medians, out / "catchup_bytes.png")
    lines += ["## Catch-up bytes against rounds missed (flagship, every training message after a client's first)",
              "", "![catch-up bytes against rounds missed](catchup_bytes.png)", "",
              "| rounds missed | messages | median bytes | ratio to 1 missed |", "|---:|---:|---:|---:|"]
    for m, med in medians.items():
        rel = f"{med / medians[1]:.2f}" if 1 in medians else "-"
        lines.append(f"| {m} | {len(by_missed[m])} | {med:.0f} | {rel} |")
    if 1 in medians and 10 in medians:
        lines += ["", f"A catch-up after 10 missed rounds costs **{medians[10] / medians[1]:.2f}x** one after 1 "
                  f"(target <= 4x). A client that missed more rounds than the server remembers "
                  f"(`sync.history`, {main_runs_settings['sync.history']}) catches up from `W_0`.", ""]

    cached = Path(args.runs) / "update_magnitudes.json"  # computed once (about a minute of training)
    if not cached.is_file():
        cached.write_text(json.dumps(update_magnitudes(cross_device("fedavg", args.dataset, args.model, 5))))
    magnitudes = json.loads(cached.read_text())
    lines += ["## How large one client's one-round update is", "",
              "Per tensor, the 10 sampled clients' updates in round 5 of plain FedAvg (the workload's own local "
              "training, SGD with momentum): what an absolute quantization step sends at once. The uniform "
              "quantizer's step does not depend on the update (qp -12: 0.125, qp -20: 0.031); what it does not "
              "send waits in the client's residual until its next turn, about 10 rounds later.", "",
              "| tensor | entries | median abs | 99th percentile | sent at once, qp -12 | sent at once, qp -20 |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {size} | {med:.2g} | {p99:.2g} | {a:.1%} | {b:.1%} |"
              for n, size, med, p99, a, b in magnitudes]
    lines.append("")

    ages = [a for r in main_runs[FLAGSHIP] for a in residual_ages(r)]
    lines += ["## Stale error feedback", "",
              f"A client's residual is applied **{statistics.mean(ages):.1f} rounds** after it was formed on "
              f"average (median {statistics.median(ages):.0f}, 90th percentile {sorted(ages)[int(0.9 * len(ages))]}; "
              f"{len(ages)} returns over the flagship runs).", "",
              "What each residual policy (`sync.stale_residual`), and no upstream error feedback, does to the "
              "flagship: [catchup_ef.md](catchup_ef.md).", ""]
    dig_fedavg, dig_flag, dig_diff, dig_ratio = paired(digits["fedavg"], digits[FLAGSHIP])
    lines += ["", "## The same flagship settings under full participation (digits, cnn, 10 clients, 20 rounds)", "",
              f"FedAvg {statistics.mean(r['acc'] for r in dig_fedavg):.4f}, {FLAGSHIP} "
              f"{statistics.mean(r['acc'] for r in dig_flag):.4f}: **{100 * dig_diff[0]:+.2f} points** "
              f"(95% CI ±{100 * dig_diff[1]:.2f}) at **{dig_ratio:.0f}x** fewer total bytes (target >= 500x within "
              "1 point).", ""]
    return "\n".join(lines)


def ef_report(args, ef_runs: dict[str, list[Path]]) -> str:
    """The error-feedback comparison: every policy's runs against ``keep`` on the same seeds."""
    seeds = range(args.seeds)
    runs = {policy: dict(zip(seeds, (summary(r) for r in rs))) for policy, rs in ef_runs.items()}
    finished = {policy: {s: r for s, r in rows.items() if "diverged" not in r} for policy, rows in runs.items()}
    lines = ["# Error feedback under partial participation (issue 18)", "",
             f"Measured at commit `{source_commit()}` by `benchmarks/catchup.py --only ef-` (one process, under the "
             f"CPU-slot wrapper of a shared, heavily loaded 2-core machine; runs kept in `{Path(args.runs).name}/`). "
             f"The flagship (`{FLAGSHIP}` composed with the `fmnist` workload preset: {args.dataset}, {args.model}, "
             f"100 clients of 600 examples, 10 sampled per round) for **{args.ef_rounds} rounds** on "
             f"{args.seeds} paired seeds; each row changes one thing, what its upstream error feedback does with "
             "a residual that waited while its client sat out (`sync.stale_residual`: `keep` applies it as it is, "
             "`decay:0.9` multiplies it by 0.9 per missed round, `reset:3` drops it after 3 missed rounds), or "
             "turns upstream error feedback off (`up.error_feedback = false`). Differences are to `keep` on the "
             "same seed: mean and 95% paired-t confidence interval. MB are payload bytes (10^6 B).", "",
             "| upstream error feedback | final acc (mean) | per seed | minus keep, points (95% CI) | MB up | "
             "MB up minus keep (95% CI) | MB total |", "|---|---:|---|---:|---:|---:|---:|"]
    verdicts = []
    for policy, rows in runs.items():
        done = finished[policy]
        per_seed = ", ".join(f"diverged in round {r['diverged']}" if "diverged" in r else f"{r['acc']:.4f}"
                             for r in rows.values())
        mean = {key: statistics.mean(r[key] for r in done.values()) if done else float("nan")
                for key in ("acc", "up", "total")}
        if policy == "keep" or len(set(done) & set(finished["keep"])) < 2:
            acc_diff = up_diff = "-"
        else:
            acc = paired_difference({s: r["acc"] for s, r in done.items()},
                                    {s: r["acc"] for s, r in finished["keep"].items()})
            up = paired_difference({s: r["up"] for s, r in done.items()},
                                   {s: r["up"] for s, r in finished["keep"].items()})
            acc_diff = f"{100 * acc.mean:+.2f} [{100 * acc.low:+.2f}, {100 * acc.high:+.2f}]"
            up_diff = f"{up.mean:+.3f} [{up.low:+.3f}, {up.high:+.3f}]"
            side = "above" if acc.low > 0 else "below" if acc.high < 0 else None
            verdicts.append(f"`{policy}` ends {abs(100 * acc.mean):.2f} points {side} `keep` (the CI excludes 0)"
                            if side else f"`{policy}` is not distinguishable from `keep` (the CI spans 0)")
        lines.append(f"| {policy} | {mean['acc']:.4f} | {per_seed} | {acc_diff} | {mean['up']:.3f} | {up_diff} | "
                     f"{mean['total']:.3f} |")
    lines += ["", "On final accuracy: " + "; ".join(verdicts) + ".", "",
              "An EF21-style correction (the client sends the compressed difference between its new corrected "
              "update and the last update the server holds for it; the server keeps one per client) is not built.",
              ""]
    return "\n".join(lines)


def plot_catch_up(points: list[tuple[int, int]], medians: dict[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([m for m, _ in points], [b / 1000 for _, b in points], s=6, alpha=0.3, label="one message")
    ax.plot(list(medians), [v / 1000 for v in medians.values()], color="black", label="median")
    ax.set_xlabel("rounds missed")
    ax.set_ylabel("catch-up payload (kB)")
    ax.set_title("one catch-up payload brings a client to W_t")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
