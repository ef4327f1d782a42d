"""A 3 schemes x 4 knob values x 3 seeds sweep, run in parallel and one run after another, in one go.

Leg 1 (parallel) is ``fedcomp sweep``'s engine: every run submitted to one SuperLink, ``--jobs``
at a time, each run's Ray capped at ``cpus // jobs`` CPUs. Leg 2 (sequential) runs the very
same planned runs one after another, each on a SuperLink and Ray of its own, exactly as a
shell loop over ``fedcomp run`` would. Both legs write full run folders; the ratio of their
wall times is the figure, and their accuracies are compared run by run (same seeds, same
settings). Then the report and the frontier of the parallel sweep are written.

The schemes: presets topk-ef (upstream only), stc and fsfl-bidir (both ways) x ``up.fraction``.

    .venv/bin/python benchmarks/sweep_bench.py            # the default workload: 10 clients, 20 rounds

``--frontier-only`` skips the timed legs: it runs (or resumes) the whole sweep in
``<work>/frontier`` and writes ``<name>.md`` with its frontier, plot and report.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from fedcomp.analysis.frontier import aggregate, bytes_to_target, pareto, run_points, target_accuracy
from fedcomp.records.provenance import source_commit
from fedcomp.analysis.report import build_report, frontier_plot, load_runs
from fedcomp.records.results import MB
from fedcomp.launch.simulation import run_simulation
from fedcomp.analysis.sweep import SweepPlan, expand, run_sweep

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SEEDS = [0, 1, 2]


def plan(rounds: int, clients: int) -> tuple[SweepPlan, str]:
    """The sweep, and a line saying which schemes it uses."""
    grid = {"preset": ["topk-ef", "stc", "fsfl-bidir"], "up.fraction": [0.005, 0.01, 0.02, 0.05], "seed": SEEDS}
    return (SweepPlan("default", {"rounds": rounds, "num_clients": clients}, grid),
            "compressed presets topk-ef, stc, fsfl-bidir x up.fraction")


def workload(args: argparse.Namespace) -> str:
    """The workload in words, saying whether it is the default one (10 clients, 20 rounds)."""
    text = f"{args.clients} clients, {args.rounds} rounds"
    return text + (" (the default workload)" if (args.clients, args.rounds) == (10, 20) else
                   " (the default workload is 10 clients and 20 rounds; shortened to fit this machine)")


def timed_sweep(the_plan: SweepPlan, folder: Path, jobs: int, cpus: int, separate: bool) -> tuple[float, dict]:
    """Wall seconds and index of one leg (``separate``: a SuperLink and Ray of its own per run, one at a time)."""
    shutil.rmtree(folder, ignore_errors=True)
    run_fn = (lambda run, run_dir, _: run_simulation(run.config, run_dir)) if separate else None
    start = time.perf_counter()
    index = run_sweep(the_plan, folder, jobs=jobs, cpus=cpus, run_fn=run_fn,
                      on_done=lambda e: print(f"  {e['status']:<6} {e['name']}", flush=True))
    return time.perf_counter() - start, index


def subset(the_plan: SweepPlan, knobs: int, seeds: int) -> SweepPlan:
    """Every scheme with the first ``knobs`` knob values and the first ``seeds`` seeds."""
    knob = next(k for k in the_plan.grid if k not in ("preset", "seed"))
    grid = {**the_plan.grid, knob: the_plan.grid[knob][:knobs], "seed": the_plan.grid["seed"][:seeds]}
    return SweepPlan(the_plan.preset, the_plan.base, grid, the_plan.points)


def frontier_section(frontier_dir: Path, name: str, n: int) -> list[str]:
    """Write ``<name>_report.html`` and ``<name>_frontier.png``; return the frontier tables as markdown lines."""
    report = build_report(frontier_dir, RESULTS / f"{name}_report.html")
    runs = load_runs(frontier_dir)
    rp = run_points([(r.name, r.config, r.summary) for r in runs])
    points = aggregate(rp)
    fronts = pareto(points)
    target, target_text = target_accuracy(points, None, 0.01)
    xy = {s: ([r.bytes_total for r in rp if r.scheme == s], [r.accuracy for r in rp if r.scheme == s])
          for s in fronts}
    png = frontier_plot(points, fronts, xy, target, "final_accuracy")
    (RESULTS / f"{name}_frontier.png").write_bytes(base64.b64decode(png.split(",", 1)[1]))
    return [
        f"## Frontier ({len(runs)} finished runs of the {n}-run sweep, final accuracy, mean over seeds)", "",
        "| scheme | knob | seeds | acc mean | acc std | acc min | acc max | MB mean | on frontier |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {p.scheme} | {p.knob_label} | {p.seeds} | {p.acc_mean:.4f} | {p.acc_std:.4f} | {p.acc_min:.4f} | "
          f"{p.acc_max:.4f} | {p.bytes_mean / MB:.3f} | {'yes' if p in fronts[p.scheme] else ''} |" for p in points),
        "", f"Least bytes to reach {target:.4f} ({target_text}):", "",
        "| scheme | seeds reaching | MB mean over seeds | MB std | MB of the mean points |", "|---|---|---|---|---|",
        *(f"| {t.scheme} | {t.reached} of {t.seeds} | "
          f"{'-' if t.mean is None else f'{t.mean / MB:.3f}'} | {'-' if t.std is None else f'{t.std / MB:.3f}'} | "
          f"{'-' if t.of_means is None else f'{t.of_means / MB:.3f}'} |" for t in bytes_to_target(rp, points, target)),
        "", f"![frontier]({name}_frontier.png)", "",
        f"The full report of the sweep: [{report.name}]({report.name}) (one self-contained HTML page).", "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time in the parallel leg")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timing-knobs", type=int, default=4, help="knob values in the timed legs (all: 4)")
    parser.add_argument("--timing-seeds", type=int, default=3, help="seeds in the timed legs (all: 3)")
    parser.add_argument("--frontier-only", action="store_true", help="no timed legs: run (or resume) the sweep, "
                        "write its frontier and report")
    parser.add_argument("--name", default="sweep", help="results file stem under benchmarks/results")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sweep-bench")
    args = parser.parse_args()
    the_plan, what = plan(args.rounds, args.clients)
    n = len(expand(the_plan))
    RESULTS.mkdir(parents=True, exist_ok=True)
    command = (f"`python benchmarks/sweep_bench.py --rounds {args.rounds} --clients {args.clients} --jobs {args.jobs} "
               + ("--frontier-only" if args.frontier_only else
                  f"--timing-knobs {args.timing_knobs} --timing-seeds {args.timing_seeds}") + f" --name {args.name}`")
    header = [
        "# Sweep: parallel vs one after another" if not args.frontier_only else "# Sweep: accuracy-vs-bytes frontier",
        "", f"Commit `{source_commit()}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {command}.", "",
        f"Sweep: {n} runs = 3 schemes x 4 knob values x 3 seeds: {what}.",
        f"Workload: digits, {workload(args)}.", ""]
    if args.frontier_only:
        frontier_dir = args.work / "frontier"
        print(f"frontier sweep ({n} runs, {args.jobs} at a time, resuming {frontier_dir})", flush=True)
        index = run_sweep(the_plan, frontier_dir, jobs=args.jobs, cpus=args.cpus,
                          on_done=lambda e: print(f"  {e['status']:<6} {e['name']}", flush=True))
        ran = sum(1 for r in index["runs"] if r["status"] == "done")
        lines = [*header, f"The runs were made (or resumed) by `fedcomp sweep`'s engine into `{frontier_dir.name}/`; "
                 f"{ran} of {n} are finished. No timing here: see sweep.md.", "",
                 *frontier_section(frontier_dir, args.name, n)]
        (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
        print("\n".join(lines))
        return
    timed_plan = subset(the_plan, args.timing_knobs, args.timing_seeds)
    n_timed = len(expand(timed_plan))
    load_before = os.getloadavg()
    print(f"{n} runs: {what}; timed legs: {n_timed} of them", flush=True)
    print(f"parallel leg ({args.jobs} at a time, one SuperLink)", flush=True)
    t_par, par = timed_sweep(timed_plan, args.work / "parallel", args.jobs, args.cpus, separate=False)
    print(f"sequential leg (one after another, a SuperLink and Ray per run): parallel took {t_par:.0f} s", flush=True)
    t_seq, seq = timed_sweep(timed_plan, args.work / "sequential", 1, args.cpus, separate=True)
    load_after = os.getloadavg()
    frontier_dir = args.work / "parallel"
    if n_timed < n:  # the whole sweep, resumable: runs already in the folder are not redone
        frontier_dir = args.work / "frontier"
        print(f"frontier sweep ({n} runs, {args.jobs} at a time, resuming {frontier_dir})", flush=True)
        run_sweep(the_plan, frontier_dir, jobs=args.jobs, cpus=args.cpus,
                  on_done=lambda e: print(f"  {e['status']:<6} {e['name']}", flush=True))

    ok_par = {r["name"]: r for r in par["runs"] if r["status"] == "done"}
    ok_seq = {r["name"]: r for r in seq["runs"] if r["status"] == "done"}
    both = sorted(set(ok_par) & set(ok_seq))
    same_acc = sum(ok_par[k]["final_accuracy"] == ok_seq[k]["final_accuracy"] for k in both)
    same_bytes = sum(ok_par[k]["bytes_total"] == ok_seq[k]["bytes_total"] for k in both)

    timed_text = ("all of them" if n_timed == n else
                  f"{n_timed} of them (3 schemes x the first {args.timing_knobs} knob value(s) x the first "
                  f"{args.timing_seeds} seed(s)): on this shared machine a run costs 1-1.5 min, mostly Ray and "
                  f"actor start-up, so the full {n}-run sequential leg did not fit the time available")
    lines = [
        "# Sweep: parallel vs one after another", "",
        f"Commit `{source_commit()}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"`python benchmarks/sweep_bench.py --rounds {args.rounds} --clients {args.clients} --jobs {args.jobs} "
        f"--timing-knobs {args.timing_knobs} --timing-seeds {args.timing_seeds}`.",
        f"Machine: {os.cpu_count()} CPUs shared with other work (load average {load_before[0]:.1f} before the timed "
        f"legs, {load_after[0]:.1f} after), so absolute times are noisy; the two legs ran back to back in one "
        "process.", "",
        f"Sweep: {n} runs = 3 schemes x 4 knob values x 3 seeds: {what}.",
        f"Workload: digits, {workload(args)}. Timed legs: {timed_text}.", "",
        "| leg | how | runs finished | wall s | median run wall s (inside the ServerApp) |",
        "|---|---|---|---|---|",
        f"| parallel | one SuperLink, {args.jobs} runs at a time, Ray capped at {max(1, args.cpus // args.jobs)} "
        f"CPU(s) per run | {len(ok_par)} of {n_timed} | {t_par:.1f} | "
        f"{statistics.median(r['wall_seconds'] for r in ok_par.values()):.1f} |",
        f"| sequential | one run after another, each with its own SuperLink and Ray (a shell loop over "
        f"`fedcomp run`) | {len(ok_seq)} of {n_timed} | {t_seq:.1f} | "
        f"{statistics.median(r['wall_seconds'] for r in ok_seq.values()):.1f} |", "",
        f"**Wall-time ratio sequential / parallel: {t_seq / t_par:.2f}x** (measured in this one run).", "",
        f"Same results in both legs: final accuracy identical in {same_acc} of {len(both)} runs, total bytes "
        f"identical in {same_bytes} of {len(both)}.", "",
        *frontier_section(frontier_dir, args.name, n),
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
