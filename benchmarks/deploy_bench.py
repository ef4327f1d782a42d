"""Seconds per deployed round, where they go, and the same run under the Simulation Engine, in one invocation.

For each preset (``--presets``, 3 SuperNodes, ``--rounds`` rounds, seed 0) it runs:

- ``deploy-local``'s engine (`run_deployment`: SuperLink + 3 SuperNodes on 127.0.0.1, TLS with
  certificates made for the run, SuperNode authentication) with fedcomp's apps, warm (each
  message's ClientApp process forked from a preloaded launcher, the default) and, for the first
  preset, cold (Flower starts each one fresh: ``deploy-local --cold``);
- the same under the Simulation Engine (`run_simulation`): seconds per round, and payload
  bytes and final accuracy, which must equal the deployment's;
- with ``--before REV``, the deployment again with the apps of commit REV (its tree extracted
  with ``git archive`` and put first on the apps' import path): the "before" figures.

Once, the anchor: a minimal stock Flower PyTorch ClientApp (`benchmarks/stock_client_app.py`,
the same model and data, plain FedAvg through `benchmarks/stock_server_app.py`) under the
same deployment as Flower runs it (each message a fresh process: cold). A round's seconds
are the ServerApp's ``round_seconds`` (``rounds.jsonl``); "s/round" is the median over rounds 2..N.

Where the time goes, two ways:

1. in the deployment itself: each of fedcomp's ClientApp processes writes its stage stamps
   (`fedcomp.records.stages`: process started (forked), handler entered, data ready, trained),
   so a training message's time splits into process start + imports, data (model, dataset,
   partition) and training + encoding; what is left of the round (round s minus the slowest
   client's span) is messaging, the server's aggregation and its central evaluation;
2. in a fresh process per tree (this tree, and REV's), timed step by step as a ClientApp
   process takes them: the interpreter and Flower's ClientApp runtime, importing the app
   module, loading the model and dataset, the partition (first process, and a second one
   that finds it cached), one local epoch.

    /work/slot .venv/bin/python benchmarks/deploy_bench.py --before 6e6cffe    # ~15 min on 2 loaded cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator

from fedcomp.launch.deploy import deployment_mode, run_deployment
from fedcomp.launch.simulation import run_simulation
from fedcomp.records.provenance import source_commit
from fedcomp.records.results import default_run_dir, read_rounds
from fedcomp.records.stages import STAGE_VARIABLE
from fedcomp.run.config import resolve
from fedcomp.run.presets import preset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "deploy.md"
STOCK = {"serverapp": "benchmarks.stock_server_app:app", "clientapp": "benchmarks.stock_client_app:app"}
CLIENTS = 3

# One ClientApp process's steps, timed in a fresh interpreter (run with the tree's folder as cwd).
PROCESS_STEPS = r"""
import json, os, sys, time
from pathlib import Path
started = time.perf_counter()
import flwr.supernode.runtime.run_clientapp  # what flwr-clientapp imports before it loads the app
flower = time.perf_counter()
import clients.client_app  # noqa: F401
imported = time.perf_counter()
import torch
from fedcomp.run.config import resolve
from fedcomp.run.presets import preset
from fedcomp.run import experiment
from fedcomp.local.training import TrainSettings, train
config = resolve(preset(sys.argv[1]), {"num_clients": int(sys.argv[2]), "seed": 0})
torch.set_num_threads(int(config["sim.threads"]))
configured = time.perf_counter()
model = experiment.run_model(config)
modelled = time.perf_counter()
loader = experiment.client_loader(config, 0, 1)
partitioned = time.perf_counter()
train(model, loader, TrainSettings.from_config(config))
trained = time.perf_counter()
print(json.dumps({"flower_runtime": flower - started, "app_import": imported - flower,
                  "settings": configured - imported, "model_and_dataset": modelled - configured,
                  "partition": partitioned - modelled, "local_epoch": trained - partitioned}))
"""


def later_median(rows: list[dict[str, Any]]) -> float:
    return statistics.median(r["round_seconds"] for r in rows if r["round"] > 1)


@contextmanager
def apps_from(tree: Path | None) -> Iterator[None]:
    """Launch runs with ``tree``'s apps first on the import path (the engines put the cwd there)."""
    if tree is None:
        yield
        return
    here = os.getcwd()
    os.chdir(tree)
    try:
        yield
    finally:
        os.chdir(here)


def stage_spans(log: Path) -> list[dict[str, float]]:
    """Per training message: seconds from process start to imported, imported to data ready, data to trained."""
    spans = []
    for line in log.read_text().splitlines() if log.is_file() else []:
        s = json.loads(line)
        spans.append({"start_and_imports": s["entered"] - s["process_started"],
                      "data": s["data_ready"] - s["entered"], "training": s["trained"] - s["data_ready"],
                      "span": s["trained"] - s["process_started"]})
    return spans


def deploy_row(name: str, config: dict[str, Any], out: Path, components: dict[str, str] | None = None,
               tree: Path | None = None, warm: bool = True) -> dict[str, Any]:
    stages = out / f"{name}.stages.jsonl"
    stages.unlink(missing_ok=True)
    os.environ[STAGE_VARIABLE] = str(stages)
    started = time.perf_counter()
    try:
        with apps_from(tree):
            summary = run_deployment(config, out / name, warm=warm,
                                     **({"components": components} if components else {}))
    finally:
        del os.environ[STAGE_VARIABLE]
    rows = read_rounds(out / name)
    spans = stage_spans(stages)
    # a round's training messages are the spans written in it: CLIENTS per round, in order
    per_round = [spans[i:i + CLIENTS] for i in range(0, len(spans), CLIENTS)]
    later_spans = [s for group in per_round[1:] for s in group]
    slowest = [max(s["span"] for s in group) for group in per_round[1:]]
    rest = [r["round_seconds"] - slow for r, slow in zip(rows[1:], slowest)]
    return {"name": name, "engine": "deployment (warm)" if warm else "deployment (cold)",
            "round_s": [r["round_seconds"] for r in rows],
            "later_s": later_median(rows), "accuracy": summary["final_accuracy"],
            "bytes_up": summary.get("bytes_up"), "bytes_down": summary.get("bytes_down"),
            "wall_s": time.perf_counter() - started,
            "stages": {k: statistics.median(s[k] for s in later_spans) for k in later_spans[0]} if later_spans
            else {}, "rest_s": statistics.median(rest) if rest else None}


def simulation_row(name: str, config: dict[str, Any], out: Path) -> dict[str, Any]:
    summary = run_simulation(config, out / name)
    rows = read_rounds(out / name)
    return {"name": name, "engine": "simulation", "round_s": [r["round_seconds"] for r in rows],
            "later_s": later_median(rows), "accuracy": summary["final_accuracy"],
            "bytes_up": summary["bytes_up"], "bytes_down": summary["bytes_down"]}


def process_steps(tree: Path, preset_name: str, cache: Path, repeats: int = 2) -> list[dict[str, float]]:
    """The steps of ``repeats`` fresh ClientApp-like processes of ``tree``, one after another, sharing
    an initially empty partition cache (the first builds the partition, the next find it cached)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "FEDCOMP_CACHE_DIR": str(cache)}
    results = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", PROCESS_STEPS, preset_name, str(CLIENTS)], cwd=tree, env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"process steps in {tree} failed:\n{done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def extract(rev: str, into: Path) -> Path:
    """The tree of commit ``rev`` (``git archive``) under ``into``."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True)
    tree = into / f"tree-{rev}"
    tree.mkdir(parents=True)
    with tarfile.open(fileobj=__import__("io").BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def render(rows: list[dict[str, Any]], steps: dict[str, list[dict[str, float]]], args: argparse.Namespace,
           commit: str, seconds: float) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    by = {r["name"]: r for r in rows}
    stock = by.get("stock")
    lines = [
        "# Deployed rounds: where the time goes", "",
        f"Measured {when} at commit `{commit}` in one invocation ({seconds:.0f} s) on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}, shared with other work: load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end), torch {version('torch')}, flwr {version('flwr')}. "
        f"Command: `python benchmarks/deploy_bench.py {' '.join(sys.argv[1:])}`.", "",
        f"Every deployment: {deployment_mode(tls=True, warm=True)} (warm) or started fresh by Flower "
        f"(cold). {CLIENTS} SuperNodes, {args.rounds} rounds, seed 0, "
        "all on one machine. s/round is the median `round_seconds` over rounds 2.."
        f"{args.rounds} (round 1 carries the first process's partition build and Flower's run start).", "",
        "## Seconds per round", "",
        "| run | engine | apps | s/round (rounds 2+) | every round s | vs stock ClientApp | final accuracy "
        "| payload up B | payload down B |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['later_s'] / stock['later_s']:.2f}x" if stock and r["engine"] != "simulation" else ""
        apps = "stock Flower FedAvg + stock PyTorch ClientApp" if r["name"] == "stock" else (
            f"fedcomp at {args.before}" if r["name"].endswith("-before") else "fedcomp")
        lines.append(f"| {r['name']} | {r['engine']} | {apps} | {r['later_s']:.2f} | "
                     f"{', '.join(f'{s:.1f}' for s in r['round_s'])} | {ratio} | {r['accuracy']:.4f} | "
                     f"{r.get('bytes_up') or ''} | {r.get('bytes_down') or ''} |")
    lines += ["", "Payload bytes and final accuracy, deployment vs simulation:", ""]
    for name in args.presets:
        sim = by[f"{name}-simulation"]
        for dep in (by[label] for label in (name, f"{name}-cold") if label in by):
            same = all(dep[k] == sim[k] for k in ("bytes_up", "bytes_down", "accuracy"))
            lines.append(f"- `{dep['name']}`, {dep['engine']}: {'equal' if same else 'NOT EQUAL'} (up "
                         f"{dep['bytes_up']} vs {sim['bytes_up']}, down {dep['bytes_down']} vs {sim['bytes_down']}, "
                         f"accuracy {dep['accuracy']:.4f} vs {sim['accuracy']:.4f}).")
    lines += ["", "## Where a deployed round's time goes (stage stamps of fedcomp's ClientApp processes)", "",
              "Medians over the training messages of rounds 2+. A message's process: start and imports = from "
              "the process's start (`/proc`; a warm child's fork) to its handler entered (interpreter, Flower's "
              "ClientApp runtime, pulling the message, installing the app, importing fedcomp; a warm child "
              "inherits the imports); data = handler entered to loader ready "
              "(settings, model, decoding the message, dataset, partition); training = local training and encoding "
              "the reply. Rest of the round = s/round minus the slowest client's span: sending and receiving "
              "messages, the SuperNodes' process launch, the server's aggregation and central evaluation.", "",
              "| run | start and imports s | data s | training s | client span s | rest of the round s |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("stages"):
            st = r["stages"]
            lines.append(f"| {r['name']} | {st['start_and_imports']:.2f} | {st['data']:.2f} | {st['training']:.2f} | "
                         f"{st['span']:.2f} | {r['rest_s']:.2f} |")
    lines += ["", "## One ClientApp process, step by step (a fresh interpreter, nothing else running in it)", "",
              "Each tree runs two processes one after the other with an initially empty partition cache: the "
              "first builds the partition, the second maps it. Seconds:", "",
              "| tree | process | Flower's ClientApp runtime | app module | settings | model + dataset | partition "
              "| one local epoch | total |", "|---|---|---|---|---|---|---|---|---|"]
    for tree, results in steps.items():
        for i, s in enumerate(results):
            lines.append(f"| {tree} | {'first' if i == 0 else 'next'} | {s['flower_runtime']:.2f} | "
                         f"{s['app_import']:.2f} | {s['settings']:.2f} | {s['model_and_dataset']:.2f} | "
                         f"{s['partition']:.2f} | {s['local_epoch']:.2f} | {sum(s.values()):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["default"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--before", help="a commit whose apps give the 'before' figures")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    commit = source_commit()
    runs = default_run_dir("deploy-bench").resolve()
    rows, steps = [], {}
    with tempfile.TemporaryDirectory(prefix="deploy-bench-") as tmp:
        before = extract(args.before, Path(tmp)) if args.before else None
        for tree, label in ((ROOT, commit), (before, args.before)):
            if tree is not None:
                steps[label] = process_steps(tree, args.presets[0], Path(tmp) / f"cache-{label}")
                print(label, steps[label], flush=True)
        for name in args.presets:
            config = resolve(preset(name), {"num_clients": CLIENTS, "rounds": args.rounds, "seed": 0})
            plan = [(name, None, None, True)]
            if name == args.presets[0]:
                plan += [(f"{name}-cold", None, None, False), ("stock", STOCK, None, False)]
                if before is not None:
                    plan.append((f"{name}-before", None, before, False))
            for label, components, tree, warm in plan:
                rows.append(deploy_row(label, config, runs, components, tree, warm))
                print(rows[-1], flush=True)
            rows.append(simulation_row(f"{name}-simulation", config, runs))
            print(rows[-1], flush=True)
    text = render(rows, steps, args, commit, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
