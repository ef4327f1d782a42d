"""Per-round time of fedcomp's FedAvg against Flower's stock FedAvg, measured in one run.

Both strategies run as full simulations (``run_simulation``: SuperLink, Ray, the same
ClientApp, the same settings and seed), alternately and ``--repeats`` times each, in the
order ours, stock, stock, ours, ... so that a drift of the machine's speed weighs on both
alike. A round's time is ``round_seconds`` of ``rounds.jsonl`` (same definition in both
ServerApps); round 1 carries Ray's actor warm-up (and our setup query) and is left out.

Then, in this process, one round of each strategy's server-side work (``configure_train``
plus ``aggregate_train`` on synthetic replies of the same shape) is timed, and, apart, the
metering that only ours does (the serialised size of every message, both directions), to
show how much of the difference the server-side code explains.

    .venv/bin/python benchmarks/overhead.py --rounds 15 --clients 10 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as StockFedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedcomp.run.config import resolve
from fedcomp.run.experiment import client_indices, run_model
from fedcomp.compress.params import ParamManifest, state_arrays
from fedcomp.records.provenance import source_commit
from fedcomp.records.results import default_run_dir, read_rounds
from fedcomp.launch.simulation import SimulationError, run_simulation
from fedcomp.exchange.channels import dense_record
from strategies.fedavg import FedAvg
from strategies.sampling import Sampler
from fedcomp.exchange.protocol import ARRAYS, METRICS, NUM_EXAMPLES, PARTITION_ID
from strategies.metering import content_size, serialized_size

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "overhead.md"
CLIENT_APP = "clients.client_app:app"
STRATEGIES = {
    "ours": {"serverapp": "strategies.server_app:app", "clientapp": CLIENT_APP},
    "stock": {"serverapp": "benchmarks.stock_server_app:app", "clientapp": CLIENT_APP},
}


@dataclass
class Run:
    """One finished simulation: which strategy, in which slot, its rounds and summary."""

    strategy: str
    repeat: int
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    wall_seconds: float
    load_average: float  # 1-minute load average at the end: other work on the machine shows here
    failed_attempts: list[str]

    @property
    def round_seconds(self) -> list[float]:
        """Per-round seconds, round 1 (warm-up) left out."""
        return [float(r["round_seconds"]) for r in self.rows if int(r["round"]) > 1]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds per simulation (round 1 is not counted)")
    parser.add_argument("--clients", type=int, default=10, help="simulated clients")
    parser.add_argument("--repeats", type=int, default=3, help="simulations per strategy")
    parser.add_argument("--attempts", type=int, default=2,
                        help="starts allowed per simulation (the launcher can fail under load)")
    parser.add_argument("--hook-repeats", type=int, default=50, help="in-process repetitions of one round's hooks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(argv)
    if min(args.rounds, args.clients) < 2 or min(args.repeats, args.attempts, args.hook_repeats) < 1:
        parser.error("need --rounds >= 2, --clients >= 2, and --repeats, --attempts, --hook-repeats >= 1")
    return args


def run_order(repeats: int) -> list[tuple[int, str]]:
    """(repeat, strategy) in ABBA order: ours, stock, stock, ours, ours, stock, ..."""
    order = []
    for repeat in range(repeats):
        pair = ["ours", "stock"] if repeat % 2 == 0 else ["stock", "ours"]
        order += [(repeat, name) for name in pair]
    return order


def run_simulations(config: Mapping[str, Any], repeats: int, root: Path, attempts: int) -> list[Run]:
    """Every simulation of the benchmark, in `run_order`; one that fails is started again, up to ``attempts`` times."""
    runs = []
    for repeat, name in run_order(repeats):
        failures: list[str] = []
        while True:
            run_dir = root / f"{name}-{repeat}" if not failures else root / f"{name}-{repeat}-retry{len(failures)}"
            started = time.perf_counter()
            try:
                summary = run_simulation(config, run_dir, components=STRATEGIES[name])
                break
            except SimulationError as err:
                failures.append(f"{run_dir.name}: {str(err).splitlines()[0]}")
                print(f"  {name} #{repeat} failed ({failures[-1]})", flush=True)
                if len(failures) >= attempts:
                    raise
        runs.append(Run(name, repeat, read_rounds(run_dir), summary, time.perf_counter() - started,
                        os.getloadavg()[0], failures))
        print(f"  {name} #{repeat}: {runs[-1].wall_seconds:.1f} s, "
              f"median round {np.median(runs[-1].round_seconds):.3f} s", flush=True)
    return runs


class _Nodes:
    """The one thing stock FedAvg asks of a grid when sampling: the connected node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _replies(messages: Sequence[Message], tensors: Mapping[str, np.ndarray],
             examples: Mapping[int, int]) -> list[Message]:
    """A freshly built training reply per message: the local model and ``num-examples``."""
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        local = {k: v + np.float32(0.001 * node) for k, v in tensors.items()}
        metrics = MetricRecord({NUM_EXAMPLES: examples[node], PARTITION_ID: node - 1})
        replies.append(Message(RecordDict({ARRAYS: dense_record(local), METRICS: metrics}), reply_to=msg))
    return replies


def hook_seconds(config: Mapping[str, Any], repeats: int) -> dict[str, list[float]]:
    """Seconds of one round's server-side strategy work, per repetition, in this process.

    ``ours`` and ``stock``: ``configure_train`` + ``aggregate_train`` (replies are built
    outside the timed part); ``metering``: what ours adds inside those hooks to
    measure the same round's messages (the broadcast content once, each message's own
    object) and replies.
    """
    # Messages take their sender's identity from the running task; here there is none.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    model = run_model(config)
    tensors = state_arrays(model)
    nodes = list(range(1, int(config["num_clients"]) + 1))
    examples = {node: len(client_indices(config, node - 1)) for node in nodes}
    ours = FedAvg(ParamManifest.from_model(model),
                  sampler=Sampler(fraction_train=float(config["fraction"]),
                                  min_train_nodes=int(config["server.min_clients"]), seed=int(config["seed"])))
    ours.sampler.partition_of = {node: node - 1 for node in nodes}
    stock = StockFedAvg(fraction_train=float(config["fraction"]), fraction_evaluate=0.0,
                        min_train_nodes=int(config["server.min_clients"]))
    grid = _Nodes(nodes)

    def one_round(strategy: FedAvg | StockFedAvg, server_round: int) -> tuple[float, list[Message], list[Message]]:
        arrays = dense_record(tensors)
        started = time.perf_counter()
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        configured = time.perf_counter() - started
        replies = _replies(messages, tensors, examples)
        started = time.perf_counter()
        strategy.aggregate_train(server_round, replies)
        return configured + time.perf_counter() - started, messages, replies

    timings: dict[str, list[float]] = {"ours": [], "stock": [], "metering": []}
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)  # stock FedAvg logs every round; keep the console readable
    try:
        for server_round in range(1, repeats + 1):
            seconds, _, _ = one_round(stock, server_round)
            timings["stock"].append(seconds)
            seconds, messages, replies = one_round(ours, server_round)
            timings["ours"].append(seconds)
            fresh_replies = _replies(messages, tensors, examples)
            started = time.perf_counter()
            shared = content_size(messages[0].content)  # as ours meters a broadcast: its content once
            for msg in messages:
                serialized_size(msg, shared)
            for msg in fresh_replies:
                serialized_size(msg)
            timings["metering"].append(time.perf_counter() - started)
    finally:
        flwr_logger.setLevel(level)
    return timings


def percentiles(values: Sequence[float]) -> dict[int, float]:
    """p10, p25, p50 (median) and p75 of ``values``."""
    levels = (10, 25, 50, 75)
    return dict(zip(levels, (float(v) for v in np.percentile(np.asarray(values, dtype=float), levels))))


def machine_facts(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the figures depend on: cores, threads, versions."""
    return [
        ("CPU cores (os.cpu_count / usable)", f"{os.cpu_count()} / {len(os.sched_getaffinity(0))}"),
        ("processor", platform.processor() or platform.machine()),
        ("torch threads (server process default)", str(torch.get_num_threads())),
        ("torch threads per client (sim.threads)", str(config["sim.threads"])),
        ("CPUs per client actor (sim.client_cpus)", str(config["sim.client_cpus"])),
        ("python / torch / flwr / ray",
         f"{platform.python_version()} / {torch.__version__} / {version('flwr')} / {version('ray')}"),
    ]


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def render(runs: list[Run], hooks: Mapping[str, list[float]], config: Mapping[str, Any],
           command: str, run_root: Path, started: datetime, elapsed: float) -> str:
    """The markdown report."""
    pooled = {name: [s for run in runs if run.strategy == name for s in run.round_seconds] for name in STRATEGIES}
    stats = {name: percentiles(values) for name, values in pooled.items()}
    means = {name: float(np.mean(values)) for name, values in pooled.items()}
    run_median = {(run.strategy, run.repeat): float(np.median(run.round_seconds)) for run in runs}
    summary_rows = []
    for name in STRATEGIES:
        accuracies = ", ".join(f"{run.summary['final_accuracy']:.4f}" for run in runs if run.strategy == name)
        summary_rows.append([name, str(len(pooled[name])), *(_seconds(stats[name][q]) for q in (50, 25, 75, 10)),
                             _seconds(means[name]), accuracies])
    run_rows = [[str(i + 1), f"{run.strategy} #{run.repeat}", _seconds(run_median[run.strategy, run.repeat]),
                 _seconds(float(np.mean(run.round_seconds))), f"{run.wall_seconds:.1f}", f"{run.load_average:.2f}",
                 "; ".join(run.failed_attempts) or "-"]
                for i, run in enumerate(runs)]
    ratio = stats["ours"][50] / stats["stock"][50]
    difference_ms = (stats["ours"][50] - stats["stock"][50]) * 1e3
    repeats = sorted({run.repeat for run in runs})
    pair_ratios = ", ".join(f"{run_median['ours', r] / run_median['stock', r]:.3f}" for r in repeats)
    hook = {name: percentiles(values)[50] * 1e3 for name, values in hooks.items()}
    commit = source_commit()
    lines = [
        "# Per-round overhead: fedcomp FedAvg vs Flower's stock FedAvg",
        "",
        f"Measured at commit `{commit}`, {started.strftime('%Y-%m-%d %H:%M UTC')}, in one invocation "
        f"({elapsed:.0f} s); "
        f"run folders under `{run_root}`.",
        "",
        f"Setup: {config['dataset']}/{config['model']}, {config['num_clients']} clients, fraction "
        f"{config['fraction']}, {config['rounds']} rounds, seed {config['seed']}, same ClientApp, central "
        "evaluation after every round in both. A round's time is `round_seconds` (end of one round's central "
        "evaluation to the end of the next); round 1 (Ray warm-up, and our setup query) is left out and the "
        "other rounds are pooled over the runs of a strategy.",
        "",
        *_table(["strategy", "rounds", "median s", "p25 s", "p75 s", "p10 s", "mean s", "final accuracy per run"],
                summary_rows),
        "",
        f"**ours / stock (medians): {ratio:.3f}** (difference {difference_ms:+.1f} ms per round). "
        f"Ratio of means {means['ours'] / means['stock']:.3f}, of p10s {stats['ours'][10] / stats['stock'][10]:.3f}; "
        f"per repeat (ours #i / stock #i, run medians): {pair_ratios}.",
        "",
        "Runs, in the order they ran (load average: 1-minute, at the end of the run; the machine is shared):",
        "",
        *_table(["#", "run", "median s", "mean s", "wall s", "load avg", "failed attempts"], run_rows),
        "",
        f"Server-side strategy work of one round, in process ({len(hooks['ours'])} repetitions, medians; "
        f"`configure_train` + `aggregate_train`, {config['num_clients']} synthetic replies of the model's shape):",
        "",
        *_table(["part", "median ms"], [
            ["ours", f"{hook['ours']:.2f}"],
            ["stock", f"{hook['stock']:.2f}"],
            ["ours - stock", f"{hook['ours'] - hook['stock']:+.2f}"],
            ["metering alone (serialised size of every message and reply)", f"{hook['metering']:.2f}"],
        ]),
        "",
        "Machine:",
        "",
        *_table(["fact", "value"], machine_facts(config)),
        "",
        "Command (from the repository root):",
        "",
        f"    {command}",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report and write it to ``--out``."""
    args = parse_args(argv)
    # run_simulation puts the current directory on the apps' PYTHONPATH: that is how the
    # ServerApp process finds benchmarks.stock_server_app.
    os.chdir(ROOT)
    config = resolve({"num_clients": args.clients, "rounds": args.rounds, "seed": args.seed,
                      "output.preset": "overhead"})
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    run_root = default_run_dir("overhead")
    print(f"simulations ({2 * args.repeats}) in {run_root}:", flush=True)
    runs = run_simulations(config, args.repeats, run_root, args.attempts)
    print(f"in-process hooks ({args.hook_repeats} repetitions)", flush=True)
    hooks = hook_seconds(config, args.hook_repeats)
    command = " ".join([os.path.relpath(sys.executable, ROOT), "benchmarks/overhead.py",
                        *(argv if argv is not None else sys.argv[1:])])
    report = render(runs, hooks, config, command, run_root, started, time.perf_counter() - clock)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
