"""Communication savings measured as a paper reports them: every scheme swept over its main knob,
paired seeds, and each scheme's accuracy difference to FedAvg with its 95% confidence interval.

Workloads (presets that compose, `fedcomp.run.presets`):

* ``digits``: the default workload (digits, cnn, 10 clients all sampled, iid, 20 rounds);
* ``fmnist-iid`` and ``fmnist-dir0.3``: Fashion-MNIST, lenet5, 10 of 100 clients of 600 examples
  per round, iid and Dirichlet(0.3), local lr 0.02 (the ``fmnist`` preset).
* ``fmnist-iid-lr0.05``: the iid workload at the default local lr 0.05 (momentum 0.9), as measured
  before the preset moved to 0.02: FedAvg ends 0.7 points lower there, and with label skew 0.05
  left FedAvg at chance for 27 of 50 rounds on one seed. Kept for its runs; run only when named
  in ``--workloads``.

Schemes (families) and their swept knobs: uniform quantization + error feedback both ways (qp),
top-k + EF both ways (fraction), STC (fraction), nnc (qp and sparsity), ECQ / ECQx / EC2T both
ways (bits and gamma), FSFL on top of uniform, top-k and ECQx (the quantizer's knob), and every
compression preset as it is (its compression time share and whether another point dominates it).

Each run is a whole fedcomp run (real strategy, ClientApp and Flower messages, serialised both
ways) over the in-process loopback grid (`strategies.loopback.run_loopback`, no Ray), in worker
processes. A finished run is stored as one small JSON file in the cache folder (default
``benchmarks/results/comm_savings_runs``), named by a hash of its resolved settings, so runs
are reused across sections and sessions and the cache can be committed; an interrupted
benchmark resumes. Runs go in priority order (FedAvg and the leading points on digits first), so
a partial benchmark still answers the main question. The report is written from whatever the
cache holds and says when it is partial.

    python benchmarks/comm_savings.py                   # everything (plan: ~2.5 h on 2 idle cores)
    python benchmarks/comm_savings.py --quick           # priority-1 points only (digits, 3 seeds)
    python benchmarks/comm_savings.py --workloads digits --priority 2
    python benchmarks/comm_savings.py --points "fedavg;nnc qp -30, sparsity 0.97"
    python benchmarks/comm_savings.py --plan            # list the grid and its estimated cost, run nothing
    python benchmarks/comm_savings.py --report-only     # tables and plots from the cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedcomp.analysis.frontier import Point, pareto  # noqa: E402
from fedcomp.analysis.stats import (Interval, bytes_to_reach, least_bytes_within, paired_difference,  # noqa: E402
                                    rounds_to_reach)
from fedcomp.errors import DivergedError  # noqa: E402
from fedcomp.records.provenance import source_commit  # noqa: E402
from fedcomp.records.results import MB, read_rounds  # noqa: E402
from fedcomp.run.config import resolve  # noqa: E402
from fedcomp.run.presets import COMPRESSIONS, FLAGSHIP, compose  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "comm_savings_runs"
SEEDS = 3
TARGET_SHARE = 0.97  # rounds and bytes to reach 97% of FedAvg's mean final accuracy
WITHIN = 0.01  # "within 1 point of FedAvg"
# settings that change how a run is carried out, not its results: not part of a run's key
MECHANICS = {"output.dir": "", "output.preset": "", "output.checkpoint": False, "client.state": "memory",
             "preset": ""}
# (point label prefix, commit, what --verify saw): a cached run of such a point measured before that commit no
# longer stands for the code (the cache key sees settings, not code); it is re-run. Found by `--verify`, which
# re-runs one seed per family and compares it with the cache.
STALE_CAUSE = {"9fd370f": "the grid catch-up of the bidirectional step and the ECQx/EC2T definition fixes, merged by "
                         "issue 18"}
STALE_SINCE: list[tuple[str, str, str]] = [  # --verify at 20ce63a, digits seed 0 (fedavg, top-k+EF, topk-ef, fsfl same)
    ("uniform+EF ", "9fd370f", "qp -16: 0.9844 -> 0.9867"),
    ("FSFL+uniform ", "9fd370f", "qp -12: 0.9733 -> 0.9244"),
    ("FSFL+top-k ", "9fd370f", "fraction 0.007: bytes 0.217 -> 0.218 MB"),
    ("STC ", "9fd370f", "fraction 1/25: 0.9689 -> 0.9733"),
    ("nnc ", "9fd370f", "qp -30, sparsity 0.97: bytes down"),
    ("ECQ ", "9fd370f", "2 bits, gamma 0.6: 0.9689 -> 0.9711"),
    ("ECQx ", "9fd370f", "2 bits, gamma 0.2: 0.9667 -> 0.9733"),
    ("EC2T ", "9fd370f", "gamma 0.1: 0.9844 -> 0.9822, 0.826 -> 0.964 MB"),
    ("FSFL+ECQx ", "9fd370f", "2 bits, gamma 0.6: 0.9733 -> 0.9711"),
    ("preset stc", "9fd370f", "0.8711 -> 0.8044"),
    ("preset ecqx", "9fd370f", "0.9778 -> 0.9667"),
    ("preset ec2t", "9fd370f", "0.9756 -> 0.9822"),
    ("preset fsfl-ecqx-bidir", "9fd370f", "its golden run changed there"),
]

WORKLOADS: dict[str, dict[str, Any]] = {
    "digits": compose(["digits"]),
    "fmnist-iid": compose(["fmnist"]),
    "fmnist-dir0.3": {**compose(["fmnist"]), "partition": "dirichlet", "data.alpha": 0.3},
    "fmnist-iid-lr0.05": {**compose(["fmnist"]), "lr": 0.05},
}
ARCHIVED = ("fmnist-iid-lr0.05",)  # reported from its runs, not run unless named in --workloads
# seconds per round on 2 idle cores, for the plan (measured on a loaded machine and scaled; FSFL trains twice)
ROUND_SECONDS = {"digits": 0.5, "fmnist-iid": 1.8, "fmnist-dir0.3": 1.8, "fmnist-iid-lr0.05": 1.8}


def both(**keys: Any) -> dict[str, Any]:
    """The same compression keys upstream and downstream."""
    return {f"{d}.{k}": v for d in ("up", "down") for k, v in keys.items()}


def uniform(qp: int) -> dict[str, Any]:
    return both(scheme="uniform-ans", qp=qp, error_feedback=True)


def topk(fraction: float) -> dict[str, Any]:
    return {**both(scheme="topk-uniform-ans", fraction=fraction), "server.lr": 1.5}


def ecqx(bits: int, gamma: float) -> dict[str, Any]:
    """ECQx upstream, ECQ downstream (the server has no data for relevances)."""
    return {"up.scheme": "ecqx-ans", "up.bits": bits, "up.gamma": gamma, "down.scheme": "ecq-ans",
            "down.bits": bits, "down.gamma": gamma}


FSFL = {"fsfl.mode": "compensate", "fsfl.scale_lr": 0.2, "fsfl.scale_qp": -36}
FSFL_FMNIST = {**FSFL, "fsfl.scale_lr": 0.05}


@dataclass(frozen=True)
class Spec:
    """One point of the grid: a family, its knob setting, the compression settings, and when to run it."""

    family: str
    knob: str
    settings: dict[str, Any] = field(hash=False)
    priority: int  # 1 runs first
    workloads: tuple[str, ...] = tuple(WORKLOADS)


def grid() -> list[Spec]:
    """Every point of the benchmark. Priority 1: FedAvg and the leading points on digits; 2: the rest of
    digits and, on Fashion-MNIST, the leading families (uniform + EF, FSFL on it, top-k + EF) at digits' cheapest
    point within 1 point of FedAvg; 3: the other families there at that point; 4: Fashion-MNIST's second knob
    values and the presets as they are.

    On Fashion-MNIST (19 local steps a pass, 10 of 100 clients) FSFL's scales use lr 0.05 (`FSFL_FMNIST`): at 0.2
    they moved up to +-100% a round there and the fold diverged (issue 18)."""
    d, f = ("digits",), ("fmnist-iid", "fmnist-dir0.3", "fmnist-iid-lr0.05")
    specs = [Spec("fedavg", "-", {}, 1)]
    for qp in (-10, -12, -14, -16, -18, -20):
        specs.append(Spec("uniform+EF", f"qp {qp}", uniform(qp), 1 if qp in (-14, -16, -18) else 2, d))
    # -24: at the fmnist preset's lr 0.02 the updates are smaller, and qp -20 is the family's most accurate point
    specs += [Spec("uniform+EF", f"qp {qp}", uniform(qp), 2 if qp == -16 else 4, f) for qp in (-16, -20, -24)]
    for fraction in (0.005, 0.01, 0.02, 0.05, 0.1):
        specs.append(Spec("top-k+EF", f"fraction {fraction:g}", topk(fraction), 2, d))
    specs += [Spec("top-k+EF", f"fraction {x:g}", topk(x), 2 if x == 0.02 else 4, f) for x in (0.02, 0.05)]
    for fraction in (1 / 400, 1 / 100, 1 / 25):
        specs.append(Spec("STC", f"fraction 1/{round(1 / fraction)}", both(scheme="stc", fraction=fraction), 2, d))
    specs += [Spec("STC", f"fraction 1/{round(1 / x)}", both(scheme="stc", fraction=x), 3 if x == 1 / 25 else 4, f)
              for x in (1 / 25, 1 / 100)]
    for qp, sparsity in ((-26, 0.6), (-26, 0.9), (-30, 0.97), (-34, 0.99)):
        settings = {**COMPRESSIONS["nnc"][1], **both(qp=qp, target_sparsity=sparsity)}
        specs.append(Spec("nnc", f"qp {qp}, sparsity {sparsity:g}", settings, 2, d))
        if qp == -30:
            specs.append(Spec("nnc", f"qp {qp}, sparsity {sparsity:g}", settings, 3, f))
    for bits, gamma in ((2, 0.1), (2, 0.6), (4, 0.1), (4, 0.6)):
        settings = both(scheme="ecq-ans", bits=bits, gamma=gamma)
        specs.append(Spec("ECQ", f"{bits} bits, gamma {gamma:g}", settings, 2, d))
        if bits == 2:
            specs.append(Spec("ECQ", f"{bits} bits, gamma {gamma:g}", settings, 3 if gamma == 0.6 else 4, f))
    for gamma in (0.2, 0.6, 1.0):
        specs.append(Spec("ECQx", f"2 bits, gamma {gamma:g}", ecqx(2, gamma), 2, d))
        if gamma == 0.2:
            specs.append(Spec("ECQx", f"2 bits, gamma {gamma:g}", ecqx(2, gamma), 3, f))
    for gamma in (0.1, 0.6):
        specs.append(Spec("EC2T", f"gamma {gamma:g}", both(scheme="ec2t-ans", gamma=gamma), 2, d))
        specs.append(Spec("EC2T", f"gamma {gamma:g}", both(scheme="ec2t-ans", gamma=gamma), 3 if gamma == 0.1 else 4,
                          f))
    for qp in (-10, -12, -14, -16):
        specs.append(Spec("FSFL+uniform", f"qp {qp}", {**uniform(qp), **FSFL}, 1 if qp in (-12, -14) else 2, d))
        if qp in (-12, -16):
            specs.append(Spec("FSFL+uniform", f"qp {qp}", {**uniform(qp), **FSFL_FMNIST}, 2 if qp == -12 else 4, f))
    specs.append(Spec("FSFL+uniform", "qp -20", {**uniform(-20), **FSFL_FMNIST}, 4, f))
    for fraction in (0.005, 0.007, 0.01):
        specs.append(Spec("FSFL+top-k", f"fraction {fraction:g}", {**topk(fraction), **FSFL},
                          1 if fraction == 0.007 else 2, d))
    specs.append(Spec("FSFL+top-k", "fraction 0.007", {**topk(0.007), **FSFL_FMNIST}, 4, f))
    for gamma in (0.6, 1.0):
        specs.append(Spec("FSFL+ECQx", f"2 bits, gamma {gamma:g}", {**ecqx(2, gamma), **FSFL}, 2, d))
    specs.append(Spec("FSFL+ECQx", "2 bits, gamma 0.6", {**ecqx(2, 0.6), **FSFL_FMNIST}, 4, f))
    for name, (_, settings) in COMPRESSIONS.items():  # each preset as it is: its time share, and is it dominated?
        if name != "fedavg":
            specs.append(Spec("preset", name, settings, 1 if name == FLAGSHIP else 2 if name != "nnc" else 3, d))
            specs.append(Spec("preset", name, settings, 4, f))
    return specs


@dataclass(frozen=True)
class Job:
    key: str
    workload: str
    spec: Spec
    seed: int
    settings: dict[str, Any] = field(hash=False)


def run_key(settings: dict[str, Any]) -> str:
    """The cache key of a run: a hash of its resolved settings that differ from the defaults, run mechanics left
    out. So two points with the same settings share a run, and a new setting whose default keeps results keeps
    every key. What a key cannot see, a code change that changes results, `STALE_SINCE` records."""
    defaults = resolve({})
    config = {k: v for k, v in resolve(settings).items() if k not in MECHANICS and v != defaults.get(k, object())}
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def is_ancestor(older: str, newer: str) -> bool:
    """Whether commit ``older`` is in ``newer``'s history (False when git cannot tell)."""
    if older not in ANCESTRY.setdefault(newer, {}):
        done = subprocess.run(["git", "merge-base", "--is-ancestor", older, newer], cwd=ROOT, capture_output=True)
        ANCESTRY[newer][older] = done.returncode == 0
    return ANCESTRY[newer][older]


ANCESTRY: dict[str, dict[str, bool]] = {}


def stale_because(record: dict[str, Any], names: Iterable[str] = ()) -> str | None:
    """Why a cached run no longer stands for the current code (a `STALE_SINCE` change it predates), or None.

    ``names``: the labels of every point that shares the run (a preset and a sweep point), besides the record's own.
    """
    for name in {label(record["family"], record["knob"]), *names}:
        for prefix, commit, why in STALE_SINCE:
            if name.startswith(prefix) and not is_ancestor(commit, record["commit"]):
                return f"measured at {record['commit']}, before {commit} ({STALE_CAUSE[commit]}; {why})"
    return None


def sharing(key: str) -> list[str]:
    """The labels of every point of the grid, on any workload, whose runs have cache key ``key``."""
    if not SHARING:
        for job in plan(list(WORKLOADS), SEEDS, 4):
            SHARING.setdefault(job.key, set()).add(label(job.spec.family, job.spec.knob))
    return sorted(SHARING.get(key, ()))


SHARING: dict[str, set[str]] = {}


def cached(cache: Path, job: Job) -> dict[str, Any] | None:
    """The current cached record of ``job``, or None (not run yet, or stale)."""
    path = cache / f"{job.key}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return None if stale_because(record, sharing(job.key)) else record


def plan(workloads: list[str], seeds: int, priority: int, points: list[str] | None = None) -> list[Job]:
    """The runs of the chosen workloads and priorities (and, when given, only the ``points`` named
    ``"family knob"`` or ``fedavg``): workload by workload (digits, then iid Fashion-MNIST, then Dirichlet), in
    priority order, every seed of a point before the next point (a partial run gives whole points: CIs)."""
    jobs = []
    for index, spec in enumerate(grid()):
        for workload in (w for w in spec.workloads if w in workloads):
            if spec.priority > priority or (points and label(spec.family, spec.knob) not in points):
                continue
            for seed in range(seeds):
                settings = {**WORKLOADS[workload], **spec.settings, "seed": seed}
                jobs.append((index, Job(run_key(settings), workload, spec, seed, settings)))
    order = {w: i for i, w in enumerate(WORKLOADS)}
    return [j for _, j in sorted(jobs, key=lambda ij: (order[ij[1].workload], ij[1].spec.priority, ij[0], ij[1].seed))]


def estimated_seconds(job: Job) -> float:
    """A run's expected time on an idle core (for the plan)."""
    config = resolve(job.settings)
    return ROUND_SECONDS[job.workload] * int(config["rounds"]) * (2 if config["fsfl.mode"] != "off" else 1)


def run_one(job: Job, cache: Path, commit: str) -> str:
    """Run ``job`` in this (worker) process unless the cache has it; store its record, naming ``commit`` (the
    checkout's when the benchmark started); return its key."""
    import torch

    from clients.client_app import app as client_app
    from strategies.loopback import run_loopback

    path = cache / f"{job.key}.json"
    if cached(cache, job):
        return job.key
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # one line per run from `execute`, not ~100 from Flower
    started = time.perf_counter()
    head = {"key": job.key, "workload": job.workload, "family": job.spec.family, "knob": job.spec.knob,
            "seed": job.seed, "settings": job.settings, "commit": commit}
    with tempfile.TemporaryDirectory(prefix="comm_savings-") as tmp:
        try:
            run_dir = run_loopback(resolve(job.settings, {**MECHANICS, "output.dir": tmp, "preset": ""}), client_app)
        except DivergedError as err:  # a result too: the report counts it against the point
            record = {**head, "seconds": round(time.perf_counter() - started, 1),
                      "diverged": {"round": err.round, "reason": str(err)}}
            store(path, record)
            return job.key
        rows = read_rounds(run_dir)
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    record = {
        **head, "seconds": round(time.perf_counter() - started, 1),
        "final_accuracy": summary["final_accuracy"], "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"], "bytes_total": summary["bytes_total"],
        "fedavg_bytes_total": summary["fedavg_bytes_total"],
        "accuracy": [round(r["accuracy"], 6) for r in rows],
        "cum_bytes_total": [r["cum_bytes_total"] for r in rows],
        # local training (with FSFL's scales pass) and upstream compression, seconds per client summed over rounds
        "train_seconds": sum(r.get("train_seconds_mean") or 0.0 for r in rows),
        "compress_seconds": sum(r.get("compress_seconds_mean") or 0.0 for r in rows),
    }
    store(path, record)
    return job.key


def store(path: Path, record: dict[str, Any]) -> None:
    """Write one run's record atomically (an interrupted benchmark leaves no half-written record)."""
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    os.replace(partial, path)


def verify(jobs: list[Job], cache: Path, workers: int) -> None:
    """Re-run, at the current checkout, the lowest cached seed of the first cached point of each family (each
    preset on its own) and say whether it reproduces its cached record: final accuracy, bytes and the curve.
    The new run replaces the cached one (it is a run of the current code either way)."""
    picks: dict[tuple[str, str], tuple[Job, dict[str, Any]]] = {}
    for job in sorted(jobs, key=lambda j: j.seed):
        path = cache / f"{job.key}.json"
        group = (job.workload, job.spec.family if job.spec.family != "preset" else label("preset", job.spec.knob))
        if group not in picks and path.is_file() and "diverged" not in (record := json.loads(path.read_text())):
            picks[group] = (job, record)
    commit = source_commit()
    for job, _ in picks.values():
        (cache / f"{job.key}.json").unlink()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_one, job, cache, commit): (job, old) for job, old in picks.values()}
        for future in as_completed(futures):
            job, old = futures[future]
            new = json.loads((cache / f"{future.result()}.json").read_text())
            keys = ("final_accuracy", "bytes_up", "bytes_down", "accuracy", "cum_bytes_total")
            changed = [k for k in keys if old[k] != new[k]]
            print(f"{job.workload} {label(job.spec.family, job.spec.knob)} seed {job.seed}: cached at {old['commit']} "
                  + ("reproduced exactly" if not changed else
                     f"DIFFERS in {', '.join(changed)} (acc {old['final_accuracy']:.4f} -> "
                     f"{new['final_accuracy']:.4f}, "
                     f"{old['bytes_total'] / MB:.3f} -> {new['bytes_total'] / MB:.3f} MB)")
                  + f" at {commit}", flush=True)


def execute(jobs: list[Job], cache: Path, workers: int) -> None:
    """Run the jobs the cache lacks, ``workers`` at a time, reporting each as it ends."""
    commit = source_commit()
    unique = {j.key: j for j in jobs}  # a run that two points share (a preset and a sweep point) runs once
    todo = [j for j in unique.values() if not cached(cache, j)]
    print(f"{len(unique) - len(todo)} of {len(unique)} runs cached; {len(todo)} to run "
          f"(~{sum(map(estimated_seconds, todo)) / 60 / max(workers, 1):.0f} min on {workers} idle cores)", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_one, job, cache, commit): job for job in todo}
        for done, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            try:
                record = json.loads((cache / f"{future.result()}.json").read_text())
                outcome = (f"DIVERGED in round {record['diverged']['round']}" if "diverged" in record else
                           f"acc {record['final_accuracy']:.4f}, {record['bytes_total'] / MB:.3f} MB")
                print(f"[{done}/{len(futures)} {time.perf_counter() - started:.0f} s] {job.workload} {job.spec.family} "
                      f"{job.spec.knob} seed {job.seed}: {outcome}, {record['seconds']:.0f} s", flush=True)
            except Exception as err:  # noqa: BLE001 - one failed run is reported, the others go on
                print(f"[{done}/{len(futures)}] FAILED {job.workload} {job.spec.family} {job.spec.knob} seed "
                      f"{job.seed}: {type(err).__name__}: {err}", flush=True)


# --- the report -----------------------------------------------------------------------------


@dataclass
class Row:
    """The runs of one (workload, family, knob): one per seed, those that finished in ``runs`` and those that
    stopped as diverged in ``diverged``."""

    family: str
    knob: str
    runs: dict[int, dict[str, Any]]
    diverged: dict[int, dict[str, Any]] = field(default_factory=dict)

    def mean(self, key: str) -> float:
        return statistics.fmean(r[key] for r in self.runs.values())

    def accuracies(self) -> dict[int, float]:
        return {s: r["final_accuracy"] for s, r in self.runs.items()}

    @property
    def label(self) -> str:
        return label(self.family, self.knob)


def label(family: str, knob: str) -> str:
    """How a point is named in tables and in ``--points``: ``fedavg`` or ``family knob``."""
    return f"{family} {knob}" if family != "fedavg" else "fedavg"


def load_rows(jobs: list[Job], cache: Path) -> dict[str, list[Row]]:
    """Per workload, the grid's rows that have at least one cached run, in grid order."""
    rows: dict[str, dict[tuple[str, str], Row]] = {}
    for job in jobs:
        record = cached(cache, job)
        if record:
            row = rows.setdefault(job.workload, {}).setdefault((job.spec.family, job.spec.knob),
                                                               Row(job.spec.family, job.spec.knob, {}))
            (row.diverged if "diverged" in record else row.runs)[job.seed] = record
    return {w: list(r.values()) for w, r in rows.items()}


def fmt_interval(diff: Interval | None) -> str:
    if diff is None:
        return "-"
    if diff.n < 2:
        return f"{100 * diff.mean:+.2f} (1 seed)"
    return f"{100 * diff.mean:+.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]"


def to_target(row: Row, target: float) -> tuple[str, str]:
    """Mean rounds and MB to reach ``target`` over the seeds that reach it (and how many do)."""
    hits = [(rounds_to_reach(r["accuracy"], target), bytes_to_reach(r["accuracy"], r["cum_bytes_total"], target))
            for r in row.runs.values()]
    hits = [h for h in hits if h[0] is not None]
    if not hits:
        return "never", "-"
    note = f" ({len(hits)}/{len(row.runs)})" if len(hits) < len(row.runs) else ""
    return (f"{statistics.fmean(h[0] for h in hits):.1f}{note}",
            f"{statistics.fmean(h[1] for h in hits) / MB:.3f}{note}")


def share(row: Row) -> float | None:
    """Upstream compression time as a share of local training time (summed over rounds, mean over seeds)."""
    shares = [r["compress_seconds"] / r["train_seconds"] for r in row.runs.values()
              if r["train_seconds"] > 0 and r["compress_seconds"] > 0]
    return statistics.fmean(shares) if shares else None


def family_shares(rows: list[Row]) -> dict[str, float]:
    """Compression time share per preset (``preset NAME``) and per swept family (mean over its points)."""
    out = {r.label: s for r in rows if r.family == "preset" and (s := share(r)) is not None}
    for family in dict.fromkeys(r.family for r in rows if r.family not in ("fedavg", "preset")):
        shares = [s for r in rows if r.family == family and (s := share(r)) is not None]
        if shares:
            out[family] = statistics.fmean(shares)
    return out


def workload_section(workload: str, rows: list[Row], out: Path, planned: int) -> tuple[list[str], dict]:
    """The tables of one workload and the figures the summary needs."""
    base = next((r for r in rows if r.family == "fedavg" and r.runs), None)
    got = sum(len(r.runs) + len(r.diverged) for r in rows)
    lines = [f"## {workload}", "", f"{got} of {planned} planned runs finished.", ""]
    broken = [r for r in rows if r.diverged]
    rows = [r for r in rows if r.runs]
    steady = [r for r in rows if not r.diverged]  # a point that diverged on any seed is on no frontier
    if base is None:
        return lines + ["FedAvg has not run yet: no differences to report.", ""], {}
    fedavg_acc, fedavg_bytes = base.mean("final_accuracy"), base.mean("bytes_total")
    target = TARGET_SHARE * fedavg_acc
    diffs = {id(r): paired_difference(r.accuracies(), base.accuracies()) if r is not base else None for r in rows}
    lines += [f"FedAvg: final accuracy {fedavg_acc:.4f} over {len(base.runs)} seed(s), {fedavg_bytes / MB:.2f} MB. "
              f"Target accuracy for rounds/MB to target: {TARGET_SHARE:.0%} of it = {target:.4f}. "
              "Δ is the mean over paired seeds of (scheme − FedAvg) final accuracy, in points, with its 95% "
              "Student-t confidence interval; ratio = FedAvg's MB over the row's.", "",
              "| scheme | knob | seeds | final acc | Δ vs FedAvg [95% CI] | MB up | MB down | MB total | ratio | "
              "rounds to target | MB to target | compress / train time | measured at |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        rounds, mb = to_target(row, target)
        s = share(row)
        seeds = f"{len(row.runs)}" + (f" (+{len(row.diverged)} diverged)" if row.diverged else "")
        lines.append(f"| {row.family} | {row.knob} | {seeds} | {row.mean('final_accuracy'):.4f} | "
                     f"{fmt_interval(diffs[id(row)])} | {row.mean('bytes_up') / MB:.3f} | "
                     f"{row.mean('bytes_down') / MB:.3f} | {row.mean('bytes_total') / MB:.3f} | "
                     f"{fedavg_bytes / row.mean('bytes_total'):.0f}x | {rounds} | {mb} | "
                     f"{'-' if s is None else f'{100 * s:.1f}%'} | "
                     f"{', '.join(f'`{c}`' for c in sorted({r['commit'] for r in row.runs.values()}))} |")
    if broken:
        lines += ["", "Stopped as diverged by the run's own divergence rules (left out of the frontiers and of the "
                  "search for the least bytes within 1 point): " + "; ".join(
                      f"**{r.label}** on {len(r.diverged)} of {len(r.diverged) + len(r.runs)} seeds (round "
                      f"{', '.join(str(d['diverged']['round']) for d in r.diverged.values())}: "
                      f"{next(iter(r.diverged.values()))['diverged']['reason']})" for r in broken) + "."]
    points = {id(r): Point(r.family, (("knob", r.knob),), len(r.runs), r.mean("bytes_total"),
                           r.mean("final_accuracy"), 0.0, min(r.accuracies().values()), max(r.accuracies().values()))
              for r in steady}
    by_point = {id(p): r for r in steady for p in [points[id(r)]]}
    fronts = pareto(points.values())
    lines += ["", "### Each scheme's frontier (mean final accuracy against mean MB; cheapest first)", ""]
    for family, front in ((f, p) for f, p in fronts.items() if f != "fedavg"):
        lines.append(f"- **{family}**: " + "; ".join(f"{p.knob[0][1]} ({p.bytes_mean / MB:.3f} MB, "
                                                      f"{p.acc_mean:.4f})" for p in front))
    # the least bytes within 1 point of FedAvg, overall and per family (rows with >= 2 seeds: a CI)
    candidates = {r.label: (r.mean("bytes_total"), diffs[id(r)]) for r in steady
                  if r is not base and len(r.runs) >= 2}
    best_overall = least_bytes_within(candidates, WITHIN)
    lines += ["", f"### Least bytes within {100 * WITHIN:g} point of FedAvg (mean Δ ≥ −{100 * WITHIN:g}; "
              "rows with ≥ 2 seeds)", "", "| scheme | cheapest point within 1 point | MB total | ratio | "
              "Δ [95% CI] |", "|---|---|---:|---:|---:|"]
    best_of: dict[str, str] = {}
    for family in dict.fromkeys(r.family for r in rows if r is not base):
        mine = {k: v for k, v in candidates.items() if k.startswith(f"{family} ")}
        name = least_bytes_within(mine, WITHIN)
        if name is None:
            lines.append(f"| {family} | none | - | - | - |")
            continue
        best_of[family] = name
        size, diff = candidates[name]
        lines.append(f"| {family} | {name[len(family) + 1:]}{' **(best)**' if name == best_overall else ''} | "
                     f"{size / MB:.3f} | {fedavg_bytes / size:.0f}x | {fmt_interval(diff)} |")
    # which presets another point beats on both axes (mean bytes and mean accuracy)
    dominated = []
    for row in (r for r in steady if r.family == "preset"):
        p = points[id(row)]
        better = [by_point[id(q)].label for q in points.values() if q is not p and by_point[id(q)].family != "preset"
                  and q.bytes_mean <= p.bytes_mean and q.acc_mean >= p.acc_mean
                  and (q.bytes_mean, q.acc_mean) != (p.bytes_mean, p.acc_mean)]
        if better:
            cheapest = min(better, key=lambda name: next(r.mean("bytes_total") for r in rows if r.label == name))
            dominated.append(f"`{row.knob}` (dominated, e.g. by {cheapest})")
    lines += ["", "Presets dominated by a swept point (fewer or equal mean bytes and higher or equal mean accuracy; "
              "few seeds, so read with the CIs above): " + (", ".join(dominated) or "none"), ""]
    plot = plot_curves(workload, steady, base, best_of, candidates, out)
    lines += [f"![accuracy against cumulative MB, {workload}]({plot.name})", ""]
    return lines, {"best": best_overall, "candidates": candidates, "fedavg_bytes": fedavg_bytes,
                   "fedavg_acc": fedavg_acc, "shares": family_shares(rows)}


def plot_curves(workload: str, rows: list[Row], base: Row, best_of: dict[str, str], candidates: dict,
                out: Path) -> Path:
    """Accuracy against cumulative MB per round, mean over seeds with a min-max band: FedAvg and each
    family's cheapest point within 1 point (or its most accurate point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [base]
    for family in dict.fromkeys(r.family for r in rows if r.family not in ("fedavg", "preset")):
        mine = [r for r in rows if r.family == family]
        chosen.append(next((r for r in mine if r.label == best_of.get(family)),
                           max(mine, key=lambda r: r.mean("final_accuracy"))))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for row in chosen:
        runs = list(row.runs.values())
        n = min(len(r["accuracy"]) for r in runs)
        x = [statistics.fmean(r["cum_bytes_total"][i] for r in runs) / MB for i in range(n)]
        acc = [[r["accuracy"][i] for r in runs] for i in range(n)]
        line, = ax.plot(x, [statistics.fmean(a) for a in acc], label=f"{row.label} ({len(runs)} seeds)")
        ax.fill_between(x, [min(a) for a in acc], [max(a) for a in acc], color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative payload MB (up + down), mean over seeds")
    ax.set_ylabel("test accuracy (band: min-max over seeds)")
    ax.set_title(f"{workload}: accuracy against bytes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = out / f"comm_savings_{workload}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def report(jobs: list[Job], cache: Path, out: Path, full_plan: list[Job]) -> str:
    """The markdown report of every cached run of ``full_plan``."""
    rows = load_rows(full_plan, cache)
    done = sum(len(r.runs) + len(r.diverged) for w in rows.values() for r in w)
    commits = sorted({run["commit"] for w in rows.values() for r in w for run in [*r.runs.values(),
                                                                                   *r.diverged.values()]})
    partial = done < len(full_plan)
    lines = ["# Communication savings, measured like a paper" + (" (PARTIAL)" if partial else ""), "",
             f"Written by `benchmarks/comm_savings.py` at commit `{source_commit()}` from {done} of the "
             f"{len(full_plan)} planned runs (runs measured at commit(s) {', '.join(f'`{c}`' for c in commits)}; "
             "each run's record is in `comm_savings_runs/`). "
             + ("**Partial: the rows below are the runs finished so far; a missing row has not run yet.** "
                if partial else "")
             + "Every run is a whole fedcomp run through the loopback grid (real strategy, ClientApp and Flower "
             "messages; no Ray), on a shared, heavily loaded 2-core machine. MB are payload bytes (10^6 B). "
             "Seeds are paired: seed s of a scheme and seed s of FedAvg share the data split, partition, "
             "initial model and client sampling.", ""]
    for commit, cause in STALE_CAUSE.items():
        stale = [(prefix.strip(), why) for prefix, c, why in STALE_SINCE if c == commit]
        lines += [f"Left out as stale: the runs of {', '.join(f'`{p}`' for p, _ in stale)} measured before `{commit}` "
                  f"({cause}). `--verify` re-ran seed 0 of one point of each and saw it change ("
                  + "; ".join(f"{p} {why}" for p, why in stale) + "); FedAvg, top-k+EF, `topk-ef` and `fsfl` "
                  "reproduced exactly and their runs stand (column *measured at*).", ""]
    summary = {}
    for workload in WORKLOADS:
        if workload in rows:
            planned = sum(1 for j in full_plan if j.workload == workload)
            section, summary[workload] = workload_section(workload, rows[workload], out, planned)
            lines += section
    lines += ["## Summary", "", "| workload | least bytes within 1 point of FedAvg | ratio | Δ [95% CI] |",
              "|---|---|---:|---:|"]
    for workload, s in summary.items():
        if s and s["best"]:
            size, diff = s["candidates"][s["best"]]
            lines.append(f"| {workload} | {s['best']} | {s['fedavg_bytes'] / size:.0f}x | {fmt_interval(diff)} |")
        elif s:
            lines.append(f"| {workload} | none yet | - | - |")
    lines += ["", "### Compression time as a share of local training time, per preset and per family", "",
              "From the runs' own timings (wall clock on the loaded machine): the clients' mean upstream compression "
              "seconds (ECQx's LRP pass, error feedback, sparsification, quantization, entropy coding) over their "
              "mean local training seconds (with FSFL's scales pass), summed over rounds, mean over seeds (a "
              "family: mean over its points). Target: below 10%. `compress_share.md` measures every preset on "
              "both workloads in CPU time, before and after the coder's speed-up.", "",
              "| preset or family | " + " | ".join(summary) + " |", "|---|" + "---:|" * len(summary)]
    names = [f"preset {n}" for n in COMPRESSIONS if n != "fedavg"]
    names += list(dict.fromkeys(k for s in summary.values() for k in (s.get("shares") or {}) if k not in names))
    for name in names:
        cells = [(s.get("shares") or {}).get(name) for s in summary.values()]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{100 * c:.1f}%" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one core each)")
    parser.add_argument("--workloads", default=",".join(w for w in WORKLOADS if w not in ARCHIVED),
                        help="comma-separated subset of " + ", ".join(WORKLOADS) + f" (default: all but "
                        f"{', '.join(ARCHIVED)})")
    parser.add_argument("--priority", type=int, default=4, help="run points up to this priority (1: FedAvg and "
                        "the leading digits points; 2: the rest of digits and the leading fmnist points; 3: one point "
                        "of every other family on fmnist; 4: all)")
    parser.add_argument("--quick", action="store_true", help="priority 1 on digits only")
    parser.add_argument("--points", default="", help="only these points: labels as the tables write them, "
                        "separated by semicolons ('fedavg;uniform+EF qp -16;nnc qp -30, sparsity 0.97')")
    parser.add_argument("--cache", default=str(CACHE), help="folder of finished runs (one JSON each)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--plan", action="store_true", help="list the runs and their estimated cost; run nothing")
    parser.add_argument("--report-only", action="store_true", help="write the report from the cache; run nothing")
    parser.add_argument("--verify", action="store_true", help="re-run one cached seed of each family of the chosen "
                        "points and say whether it reproduces the cache (whether a code change made it stale)")
    args = parser.parse_args()
    workloads = ["digits"] if args.quick else [w.strip() for w in args.workloads.split(",")]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    cache, out = Path(args.cache), Path(args.out)
    cache.mkdir(parents=True, exist_ok=True)
    points = [p.strip() for p in args.points.split(";") if p.strip()]
    unknown = set(points) - {label(s.family, s.knob) for s in grid()}
    if unknown:
        raise SystemExit(f"no such point(s) in the grid: {'; '.join(sorted(unknown))} (see --plan)")
    jobs = plan(workloads, args.seeds, 1 if args.quick else args.priority, points)
    full_plan = plan(list(WORKLOADS), args.seeds, 4)
    if args.plan:
        for job in jobs:
            print(f"p{job.spec.priority} {job.workload:<14} {job.spec.family:<13} {job.spec.knob:<22} seed {job.seed}"
                  f"  ~{estimated_seconds(job):.0f} s  {'cached' if cached(cache, job) else ''}")
        unique = {j.key: j for j in full_plan}.values()
        total = sum(map(estimated_seconds, unique))
        print(f"{len(jobs)} runs; the whole plan: {len(unique)} runs, ~{total / 3600 / args.jobs:.1f} h on "
              f"{args.jobs} idle cores")
        return
    if args.verify:
        verify(jobs, cache, args.jobs)
        return
    if not args.report_only:
        execute(jobs, cache, args.jobs)
    text = report(jobs, cache, out, full_plan)
    (out / "comm_savings.md").write_text(text)
    print(text)
    shutil.rmtree(ROOT / "runs" / "comm_savings", ignore_errors=True)  # the folders of the previous benchmark


if __name__ == "__main__":
    main()
