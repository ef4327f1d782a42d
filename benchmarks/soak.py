"""Soak: a long compressed run with failures injected; memory sampled every round.

The run is the real ServerApp loop (`strategies.server_app.serve`: the strategy, central
evaluation, rounds.jsonl) and the real ClientApp, over the in-process `LoopbackGrid`
(every message serialised and inflated as over a SuperLink, no Ray: 200 Ray rounds would
take far longer on this machine, and one process holds both sides, so its memory is the
whole run's). Clients fail, send corrupted payloads and are slow past
``server.round_timeout`` at the configured rates; a compressed preset with fraction < 1
exercises catch-up replays and full-model resyncs.

At the start of every round's training the process's resident memory (VmRSS, and the peak
VmHWM, from /proc/self/status) is sampled, with the sizes of everything that is known to
grow with the run: the meter's records (one per message: the run's data), the rows the
recorder keeps, the strategy's bookkeeping and the clients' state. Memory is flat when the
RSS slope over rounds 50..N is near zero and the median RSS of the last quarter of rounds
is within a few MB of the first quarter's.

    nice -n 10 .venv/bin/python benchmarks/soak.py --rounds 200
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import app as client_app
from fedcomp.run.config import resolve
from fedcomp.exchange.faults import FaultPlan
from fedcomp.run.presets import PRESETS
from fedcomp.records.provenance import source_commit
from fedcomp.records.results import read_rounds
from strategies.loopback import LoopbackGrid
from strategies.server_app import build_strategy, serve

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MB = 2**20


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def record_dict_bytes(state: RecordDict) -> int:
    """Array bytes held in a client's ``context.state``."""
    return sum(len(a.data) for record in state.array_records.values() for a in record.values())


class SampledGrid(LoopbackGrid):
    """The loopback grid, sampling memory and bookkeeping sizes when a round's training starts
    (and, when tracing, tracemalloc snapshots at round ``trace_from`` and at the last round)."""

    def __init__(self, *args, trace_from: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.samples: list[dict] = []
        self.strategy = None
        self.trace_from = trace_from
        self.last_round = int(args[2]["rounds"])
        self.snapshots: list[tracemalloc.Snapshot] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            s = self.strategy
            self.samples.append({
                "round": int(messages[0].content["config"]["server-round"]),
                "rss_mb": proc_status_mb("VmRSS"), "hwm_mb": proc_status_mb("VmHWM"),
                "meter_records": len(s.meter.records), "client_timings": len(s.client_timings),
                "history": len(getattr(s, "history", ())), "client_version": len(getattr(s, "client_version", {})),
                "client_state_kb": sum(record_dict_bytes(c.state) for c in self.contexts.values()) / 1024,
            })
            if tracemalloc.is_tracing() and self.samples[-1]["round"] in (self.trace_from, self.last_round):
                gc.collect()  # count what is held, not garbage awaiting the cycle collector
                self.snapshots.append(tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__)]))  # nor the first snapshot itself
        return super().send_and_receive(messages, timeout=timeout)


def soak(settings: dict, trace_from: int = 0) -> tuple[dict, SampledGrid, list[dict], dict, float]:
    """Run ``settings`` in process; return the config, the grid (samples, strategy), rows, summary, seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        config = resolve({**settings, "output.dir": tmp})
        grid = SampledGrid(client_app, {9000 + 7 * i: i for i in range(int(config["num_clients"]))}, config,
                           trace_from=trace_from)

        def builder(cfg, model):
            grid.strategy = build_strategy(cfg, model)
            return grid.strategy

        started = time.perf_counter()
        serve(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config), builder)
        seconds = time.perf_counter() - started
        return config, grid, read_rounds(tmp), json.loads((Path(tmp) / "summary.json").read_text()), seconds


def traced_growth(settings: dict, rounds: int, start: int, top: int = 8) -> list[str]:
    """The allocation sites whose live memory grew most from round ``start`` to the last round of a
    ``rounds``-round run under tracemalloc (a separate run: tracing inflates RSS itself)."""
    tracemalloc.start(1)
    try:
        _, grid, _, _, _ = soak({**settings, "rounds": rounds}, trace_from=start)
    finally:
        tracemalloc.stop()
    stats = grid.snapshots[1].compare_to(grid.snapshots[0], "lineno")
    per_round = rounds - start
    lines = ["| allocation site | growth KiB | KiB per round | blocks |", "|---|---|---|---|"]
    for stat in sorted(stats, key=lambda s: -s.size_diff)[:top]:
        frame = stat.traceback[0]
        path = Path(frame.filename)
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{frame.lineno}"
        lines.append(f"| `{where}` | {stat.size_diff / 1024:+.1f} | {stat.size_diff / 1024 / per_round:+.2f} | "
                     f"{stat.count_diff:+d} |")
    total = sum(s.size_diff for s in stats)
    lines.append(f"| all sites | {total / 1024:+.1f} | {total / 1024 / per_round:+.2f} | "
                 f"{sum(s.count_diff for s in stats):+d} |")
    lines += ["", f"At {total / 1024 / per_round:.1f} KiB per round, a 10,000-round run would hold about "
              f"{total / per_round * 10_000 / MB:.0f} MiB more at its end than at its start."]
    return lines


def fit(rounds: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of values over rounds."""
    return float(np.polyfit(rounds, values, 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--preset", default="fsfl-bidir")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--failure", type=float, default=0.1, help="faults.client_failure_rate")
    parser.add_argument("--corrupt", type=float, default=0.05, help="faults.corrupt_payload_rate")
    parser.add_argument("--slow", type=float, default=0.03, help="faults.slow_client_rate")
    parser.add_argument("--slow-seconds", type=float, default=1.5)
    parser.add_argument("--timeout", type=float, default=1.0, help="server.round_timeout")
    parser.add_argument("--steady-from", type=int, default=50, help="first round of the flatness fit")
    parser.add_argument("--trace-rounds", type=int, default=100,
                        help="rounds of the second, traced run that names what grows (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.md")
    args = parser.parse_args(argv)

    logging.getLogger("flwr").setLevel(logging.ERROR)  # a WARNING per injected failure otherwise
    torch.set_num_threads(1)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    settings = {**PRESETS[args.preset][1], "num_clients": args.clients, "rounds": args.rounds,
                "fraction": args.fraction, "faults.client_failure_rate": args.failure,
                "faults.corrupt_payload_rate": args.corrupt, "faults.slow_client_rate": args.slow,
                "faults.slow_seconds": args.slow_seconds, "server.round_timeout": args.timeout,
                "output.preset": args.preset, "client.state": "memory"}  # held in this process: measured
    commit = source_commit()
    config, grid, rows, summary, seconds = soak(settings)
    samples = grid.samples
    final = {"round": args.rounds + 1, "rss_mb": proc_status_mb("VmRSS"), "hwm_mb": proc_status_mb("VmHWM"),
             "meter_records": len(grid.strategy.meter.records)}

    # no round lost: a row per round, each with its failures counted
    assert [r["round"] for r in rows] == list(range(1, args.rounds + 1)), "a round is missing"
    plan = FaultPlan.from_config(config)
    injected_fail = injected_corrupt = injected_slow = 0
    for row in rows:
        for client in row["clients"]:
            draw = plan.draw(row["round"], client["partition_id"])
            injected_fail += draw["fail"]
            injected_corrupt += draw["corrupt"] and not draw["fail"]
            injected_slow += draw["slow"] and not draw["fail"]
    failed = sum(r["clients_failed"] for r in rows)
    timed_out = sum(r["clients_timed_out"] for r in rows)
    sampled = sum(r["clients_sampled"] for r in rows)

    rounds = np.array([s["round"] for s in samples])
    rss = np.array([s["rss_mb"] for s in samples])
    steady = rounds >= args.steady_from
    quarter = max(1, steady.sum() // 4)
    first_q, last_q = float(np.median(rss[steady][:quarter])), float(np.median(rss[steady][-quarter:]))
    slope = fit(rounds[steady], rss[steady])
    records = np.array([s["meter_records"] for s in samples])
    records_per_round = fit(rounds[steady], records[steady])
    row_bytes = float(np.mean([len(json.dumps(r)) for r in rows]))

    plot(samples, args.out.with_suffix(".png"), args)
    lines = [
        "# Soak: memory and lost rounds over a long run with failures",
        "",
        f"Produced by `benchmarks/soak.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit `{commit}`, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}, torch {torch.__version__}, one torch thread.",
        "",
        f"The real ServerApp loop and ClientApp, {args.clients} clients, preset `{args.preset}`, "
        f"fraction {args.fraction}, {args.rounds} rounds, over the in-process LoopbackGrid (no Ray: "
        "every message is serialised and inflated as over a SuperLink; one process holds the server "
        "and all clients, and the clients keep their state in memory (`client.state=memory`), so its "
        "memory is the whole run's). Injected per client and round: failure "
        f"{args.failure}, corrupted payload {args.corrupt}, slow {args.slow} ({args.slow_seconds} s against "
        f"`server.round_timeout` = {args.timeout} s). Memory is read from /proc/self/status when each "
        f"round's training starts. Run time {seconds:.0f} s.",
        "",
        "## No round lost",
        "",
        "| rounds in rounds.jsonl | clients sampled | usable | failed | of which timed out | injected failures "
        "| injected corruptions | injected slow | final accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {len(rows)} of {args.rounds} | {sampled} | {sampled - failed} | {failed} | {timed_out} | "
        f"{injected_fail} | {injected_corrupt} | {injected_slow} | {summary['final_accuracy']:.4f} |",
        "",
        "Every sampled client that failed, sent a corrupted payload or timed out is counted in its "
        "round's `clients_failed`; the injected counts are the fault plan's draws for the same "
        "clients and rounds (a failing client's other faults do not happen). Failed "
        f"{'equals' if failed == injected_fail + injected_corrupt + injected_slow else 'differs from'} the sum of "
        f"the injected faults ({injected_fail + injected_corrupt + injected_slow}), and timed out "
        f"{'equals' if timed_out == injected_slow else 'differs from'} the injected slow clients.",
        "",
        "## Memory",
        "",
        "| | MiB |",
        "|---|---|",
        f"| RSS at round 1 | {rss[0]:.1f} |",
        f"| RSS at round {args.steady_from} | {rss[rounds == args.steady_from][0]:.1f} |",
        f"| RSS at round {rounds[-1]} | {rss[-1]:.1f} |",
        f"| RSS after the run | {final['rss_mb']:.1f} |",
        f"| peak RSS (VmHWM) | {final['hwm_mb']:.1f} |",
        f"| median RSS, first quarter of rounds {args.steady_from}..{rounds[-1]} | {first_q:.1f} |",
        f"| median RSS, last quarter | {last_q:.1f} |",
        f"| RSS slope over rounds {args.steady_from}..{rounds[-1]} | {1024 * slope:+.1f} KiB/round |",
        "",
        "What grows with the round number is the run's own record (the traced run below gives the bytes):",
        "",
        f"- the meter's records, one per message, {records_per_round:.1f} per round (`fedcomp/records/meter.py`, "
        "`strategies/metering.py`): they are the run's data, summed for every row and summary.json;",
        f"- the recorder's rows, one per round, about {row_bytes:.0f} bytes each as JSON "
        f"(`fedcomp/records/results.py`, "
        "and the client timings in them, `strategies/fedavg.py`): it keeps them for summary.json and the plot;",
        "- Flower's `Strategy.start` keeps each round's aggregated metrics in its `Result` (`metricrecord.py`).",
        "",
        f"The measured RSS slope, {1024 * slope:+.1f} KiB/round, is "
        f"{1024 * slope * (rounds[-1] - args.steady_from) / 1024:+.1f} MiB over rounds "
        f"{args.steady_from}..{rounds[-1]}; RSS also moves with the allocator's pools.",
        "",
        "Bounded: the strategy's client timings (the latest round only: "
        f"{samples[-1]['client_timings']} entry), its replay history ({samples[-1]['history']} payloads, "
        f"`sync.history` = {config['sync.history']}), its per-client versions "
        f"({samples[-1]['client_version']} entries, one per client), and the clients' state "
        f"({samples[1]['client_state_kb']:.0f} KiB at round 2, {samples[-1]['client_state_kb']:.0f} KiB "
        f"at round {rounds[-1]}, all clients together).",
        "",
        "| round | RSS MiB | peak MiB | meter records | client state KiB |",
        "|---|---|---|---|---|",
        *[f"| {s['round']} | {s['rss_mb']:.1f} | {s['hwm_mb']:.1f} | {s['meter_records']} | "
          f"{s['client_state_kb']:.0f} |" for s in samples if s["round"] in (1, 2) or s["round"] % 25 == 0],
        "",
        f"![RSS per round]({args.out.with_suffix('.png').name})",
        "",
    ]
    if args.trace_rounds:
        start = min(args.steady_from, args.trace_rounds // 2)
        lines += [
            "## What grows, by allocation site",
            "",
            f"A second run of the same settings, {args.trace_rounds} rounds under tracemalloc: the live Python "
            f"allocations that grew most from round {start} to round {args.trace_rounds} (tracemalloc sees "
            "Python's allocations, "
            "numpy's and torch's buffers that go through it; not the allocator's pools).",
            "",
            *traced_growth(settings, args.trace_rounds, start),
            "",
        ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def plot(samples: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [s["round"] for s in samples]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(rounds, [s["rss_mb"] for s in samples], label="RSS")
    ax.plot(rounds, [s["hwm_mb"] for s in samples], label="peak RSS (VmHWM)", linestyle="--")
    ax.axvline(args.steady_from, color="grey", linewidth=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("MiB")
    ax.set_title(f"soak: {args.preset}, {args.clients} clients, fraction {args.fraction}, faults injected")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
