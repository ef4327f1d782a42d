"""Sweeps: many runs over a grid or list of settings, several at a time, resumable, in one folder.

A sweep is a preset, fixed settings, a grid (every combination of the listed values) and
an optional list of extra setting tables, each crossed with the grid. ``preset`` may be
swept like any setting. Each run gets a folder named after its own settings
(``runs/<key>-<value>_...``), so growing a grid or rerunning an interrupted sweep redoes
only what has no ``summary.json`` yet. ``sweep.json`` in the sweep folder is the index:
the plan and, per run, its folder, overrides, status, and headline figures.

All runs go to one SuperLink (`fedcomp.launch.simulation.SuperLink`), at most ``jobs`` at a time;
each run's own Ray instance gets ``cpus // jobs`` CPUs. Why not one shared Ray: see the
module docstring of `fedcomp.launch.simulation`.

A sweep file (TOML)::

    preset = "default"           # optional
    [set]                        # fixed settings for every run
    rounds = 5
    [grid]                       # every combination
    lr = [0.02, 0.05]
    seed = [0, 1, 2]
    [[runs]]                     # optional list, each entry crossed with the grid
    preset = "quick"
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fedcomp.run.config import flatten, parse_assignment, resolve
from fedcomp.data.registry import absolute_paths
from fedcomp.errors import ConfigError, FedcompError
from fedcomp.run.presets import preset as preset_settings

INDEX = "sweep.json"
PRESET_KEY = "preset"  # a sweepable pseudo-setting: which preset a run starts from


@dataclass(frozen=True)
class SweepPlan:
    """What to run: base preset and settings, a grid, and a list of extra setting tables."""

    preset: str = "default"
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its folder name, the settings it varies, and its resolved config."""

    name: str
    overrides: dict[str, Any]
    config: dict[str, Any]


def parse_grid(text: str) -> tuple[str, list[str]]:
    """``key=v1,v2,v3`` to ``(key, [v1, v2, v3])``."""
    key, value = parse_assignment(text)
    values = [v.strip() for v in value.split(",") if v.strip()]
    if not values:
        raise ConfigError(f"--grid {text!r} lists no values")
    return key, values


def load_sweep_file(path: str | Path) -> SweepPlan:
    """Read a sweep file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        with path.open("rb") as f:
            table = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"sweep file {path} is not valid TOML: {err}") from None
    unknown = set(table) - {"preset", "set", "grid", "runs"}
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                          "(expected preset, [set], [grid], [[runs]])")
    grid = flatten(table.get("grid", {}))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep file {path}: grid entry '{key}' must be a non-empty list")
    runs = table.get("runs", [])
    if not isinstance(runs, list):
        raise ConfigError(f"sweep file {path}: 'runs' must be an array of tables ([[runs]])")
    return SweepPlan(preset=str(table.get("preset", "default")), base=flatten(table.get("set", {})),
                     grid=grid, points=[flatten(p) for p in runs])


def merge_plans(plan: SweepPlan, base: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> SweepPlan:
    """``plan`` with command-line settings and grid entries added (the command line wins)."""
    return SweepPlan(plan.preset, {**plan.base, **base}, {**plan.grid, **grid}, plan.points)


def run_name(overrides: Mapping[str, Any]) -> str:
    """A folder name made of the run's own settings; long ones end in a hash to stay unique."""
    text = "_".join(f"{k}-{v}" for k, v in overrides.items()) or "base"
    text = re.sub(r"[^A-Za-z0-9._=+-]", "-", text)
    if len(text) > 100:
        text = f"{text[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"
    return text


def expand(plan: SweepPlan) -> list[PlannedRun]:
    """Every run of ``plan``, each config resolved and validated (bad settings fail here, before any run)."""
    keys = list(plan.grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*plan.grid.values())]
    runs, seen = [], set()
    for point in plan.points or [{}]:
        for combo in combos:
            overrides = {**point, **combo}
            settings = {k: v for k, v in overrides.items() if k != PRESET_KEY}
            config = resolve(preset_settings(str(overrides.get(PRESET_KEY, plan.preset))), plan.base, settings)
            name = run_name(overrides)
            if name in seen:
                continue
            seen.add(name)
            runs.append(PlannedRun(name, dict(overrides), config))
    return runs


def finished(run_dir: Path, config: Mapping[str, Any]) -> bool:
    """True when ``run_dir`` holds a finished run of ``config``; an error when it holds another run.

    Settings that only one side knows (added to fedcomp since) are not compared.
    """
    if not (run_dir / "summary.json").is_file():
        return False
    try:
        done = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    planned = {**config, "dataset": absolute_paths(str(config["dataset"]))}  # as the run recorded it
    differ = sorted(k for k in set(done) & set(planned) if k != "output.dir" and done[k] != planned[k])
    if differ:
        raise FedcompError(f"{run_dir} holds a finished run with other settings ({', '.join(differ)}); "
                           "sweep into a new folder")
    return True


def load_index(sweep_dir: str | Path) -> dict[str, Any]:
    """A sweep folder's ``sweep.json``."""
    path = Path(sweep_dir) / INDEX
    if not path.is_file():
        raise FedcompError(f"{sweep_dir} is not a sweep folder (no {INDEX})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FedcompError(f"{path} is not valid JSON: {err}") from None


def finished_runs(sweep_dir: str | Path) -> list[Path]:
    """The folders of a sweep's runs that have a summary, in the index's order."""
    sweep_dir = Path(sweep_dir)
    dirs = [sweep_dir / r["dir"] for r in load_index(sweep_dir)["runs"]]
    return [d for d in dirs if (d / "summary.json").is_file()]


def _write_index(sweep_dir: Path, index: Mapping[str, Any]) -> None:
    tmp = sweep_dir / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    tmp.replace(sweep_dir / INDEX)


def _entry(run: PlannedRun, status: str, summary: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    entry = {"name": run.name, "dir": f"runs/{run.name}", "overrides": run.overrides, "status": status, **extra}
    if summary is not None:
        entry.update({k: summary.get(k) for k in ("final_accuracy", "best_accuracy", "bytes_total", "wall_seconds")})
        if summary.get("warning"):  # e.g. a finished run at chance accuracy
            entry["warning"] = summary["warning"]
    return entry


RunFn = Callable[[PlannedRun, Path, int], Mapping[str, Any]]


def run_sweep(plan: SweepPlan, sweep_dir: str | Path, jobs: int = 1, cpus: int | None = None,
              on_done: Callable[[dict[str, Any]], None] | None = None, run_fn: RunFn | None = None) -> dict[str, Any]:
    """Run every unfinished run of ``plan`` into ``sweep_dir``, ``jobs`` at a time; return the index.

    ``run_fn(run, run_dir, ray_cpus)`` runs one; by default it is a submission to one shared
    SuperLink. A run that fails is marked ``failed`` with its error and the others go on.
    """
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1; got {jobs}")
    cpus = cpus or os.cpu_count() or 1
    ray_cpus = max(1, cpus // jobs)
    sweep_dir = Path(sweep_dir).resolve()
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    runs = expand(plan)
    entries = {r.name: (_entry(r, "done", json.loads((sweep_dir / "runs" / r.name / "summary.json").read_text()))
                        if finished(sweep_dir / "runs" / r.name, r.config) else _entry(r, "pending"))
               for r in runs}
    index: dict[str, Any] = {"preset": plan.preset, "base": plan.base, "grid": plan.grid, "points": plan.points,
                             "jobs": jobs, "cpus": cpus, "runs": list(entries.values())}
    _write_index(sweep_dir, index)
    todo = [r for r in runs if entries[r.name]["status"] != "done"]
    lock = threading.Lock()
    started = time.perf_counter()

    def record(run: PlannedRun, entry: dict[str, Any]) -> None:
        with lock:
            entries[run.name] = entry
            index["runs"] = list(entries.values())
            _write_index(sweep_dir, index)
        if on_done is not None:
            on_done(entry)

    def execute(fn: RunFn) -> None:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(fn, r, sweep_dir / "runs" / r.name, ray_cpus): r for r in todo}
            try:
                for future in as_completed(futures):
                    run = futures[future]
                    try:
                        record(run, _entry(run, "done", future.result()))
                    except Exception as err:  # one failed run must not stop the sweep; the index says why
                        record(run, _entry(run, "failed", error=str(err).splitlines()[0] if str(err) else repr(err)))
            except BaseException:  # Ctrl-C: start nothing more; the runs under way end with the SuperLink
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    if todo:
        if run_fn is not None:
            execute(run_fn)
        else:
            from fedcomp.launch.simulation import SuperLink

            with SuperLink(sweep_dir / "superlink.log") as link:
                execute(lambda run, run_dir, n: link.run(run.config, run_dir, ray_cpus=n))
    index["wall_seconds"] = time.perf_counter() - started
    _write_index(sweep_dir, index)
    return index


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders from run or sweep folders: a sweep folder stands for its finished runs."""
    out: list[Path] = []
    for path in map(Path, paths):
        if (path / INDEX).is_file():
            runs = finished_runs(path)
            if not runs:
                raise FedcompError(f"the sweep {path} has no finished run yet")
            out.extend(runs)
        else:
            out.append(path)
    return out
