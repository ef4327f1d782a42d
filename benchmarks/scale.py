"""Ten thousand clients on one machine: the flagship on Fashion-MNIST at 10 to 10,000 clients.

For each client count N (``--clients``), one run of ``fsfl-bidir`` on the ``fmnist`` workload
(Fashion-MNIST split N ways, lenet5), ``--fraction`` of the clients trained per round (at
least ``server.min_clients = 1``), ``--rounds`` rounds, seed 0, launched as ``fedcomp run``
launches it (`fedcomp.launch.simulation.run_simulation`: ``flower-superlink --simulation``
and ``flwr run``, Ray), with ``server.discovery = sampled`` (no node is contacted unless
sampled) and ``client.state = disk`` (each client's copy of the model and its
error-feedback residual in ``<run folder>/client-state``, the two newest rounds). While it
runs, a sampler reads every 0.5 s the proportional set size (PSS) of every process of the
run (this script's children and anything carrying the run's mark); the peak of the sum is
the run's peak memory. s/round is the median ``round_seconds`` of rounds 2 and later.

Each client count's row is kept in ``scale_clients.json`` beside the results (with the
commit it measured), so counts can be run one invocation at a time; ``scale.md`` is
rendered from all kept rows, with ``deploy.md`` (``benchmarks/deploy_bench.py``) quoted
under "Deployment" when it exists.

    .venv/bin/python benchmarks/scale.py --clients 10 100 1000      # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/scale.py --clients 10000            # then the big one
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import uuid
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import torch

from fedcomp.launch.simulation import run_simulation
from fedcomp.records.provenance import source_commit
from fedcomp.records.results import default_run_dir, read_rounds
from fedcomp.run.config import resolve
from fedcomp.run.presets import compose

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.md"
ROWS = RESULTS.with_name("scale_clients.json")
DEPLOY = RESULTS.with_name("deploy.md")
EARLIER = RESULTS.with_name("scale_clients_earlier.json")
MB = 2**20
MARK_NAME = "FEDCOMP_SCALE_BENCH"
PRESETS = ("fmnist", "fsfl-bidir")


class MemorySampler:
    """Peak summed PSS of the processes carrying ``MARK_NAME=mark`` in their environment or descending from this
    process (Ray's agents overwrite their environ with their process title, so the mark alone misses them)."""

    def __init__(self, mark: str, interval: float = 0.5) -> None:
        self.needle = f"{MARK_NAME}={mark}".encode()
        self.interval = interval
        self.peak_total = 0
        self.peak_by_kind: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        total, by_kind = 0, {}
        procs = [p for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid()]
        ours = _descendants(procs, os.getpid())
        for proc in procs:
            try:
                if int(proc.name) not in ours and self.needle not in (proc / "environ").read_bytes():
                    continue
                pss = next(int(line.split()[1]) * 1024 for line in (proc / "smaps_rollup").read_text().splitlines()
                           if line.startswith("Pss:"))
                kind = _kind((proc / "cmdline").read_bytes())
            except (OSError, StopIteration):
                continue
            total += pss
            by_kind[kind] = by_kind.get(kind, 0) + pss
        self.peak_total = max(self.peak_total, total)
        for kind, value in by_kind.items():
            self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)


def _descendants(procs: list[Path], root: int) -> set[int]:
    """The ids of every process below ``root``."""
    children: dict[int, list[int]] = {}
    for proc in procs:
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _kind(cmdline: bytes) -> str:
    """A process's role, from its command line."""
    text = cmdline.replace(b"\0", b" ").decode(errors="replace")
    for kind in ("flwr-simulation", "ClientAppActor", "flower-superlink", "flower-supernode", "flwr-clientapp",
                 "flwr-serverapp", "raylet", "gcs_server"):
        if kind in text:
            return kind
    return "other"


def marked(mark: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``run`` with the marker in the environment its processes inherit."""
    os.environ[MARK_NAME] = mark
    try:
        return run()
    finally:
        del os.environ[MARK_NAME]


def disk_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it does not exist)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def clients_row(num_clients: int, fraction: float, rounds: int, out: Path) -> dict[str, Any]:
    """One run of the flagship at ``num_clients`` clients; its figures."""
    config = resolve(compose(PRESETS), {"num_clients": num_clients, "fraction": fraction, "rounds": rounds,
                                        "seed": 0, "server.min_clients": 1, "server.discovery": "sampled",
                                        "client.state": "disk"})
    mark, run_dir = uuid.uuid4().hex, out / f"clients{num_clients}"
    started = time.perf_counter()
    with MemorySampler(mark) as memory:
        summary = marked(mark, lambda: run_simulation(config, run_dir))
    wall = time.perf_counter() - started
    rows = read_rounds(run_dir)
    later = [r["round_seconds"] for r in rows if r["round"] > 1]
    return {"clients": num_clients, "per_round": statistics.median(r["clients_sampled"] for r in rows),
            "round_s": statistics.median(later), "round1_s": rows[0]["round_seconds"], "wall_s": wall,
            "rounds": len(rows), "failed": sum(r["clients_failed"] for r in rows),
            "peak_mb": memory.peak_total / MB, "peak_by_kind": {k: v / MB for k, v in memory.peak_by_kind.items()},
            "state_mb": disk_bytes(run_dir / "client-state") / MB, "run_dir_mb": disk_bytes(run_dir) / MB,
            "state_folders": sum(1 for _ in (run_dir / "client-state").glob("p*")),
            "accuracy": summary["final_accuracy"], "bytes_total": summary["bytes_total"]}


def table(rows: list[dict[str, Any]], with_commit: bool = False) -> list[str]:
    """The rows as a Markdown table, by client count."""
    extra = " commit |" if with_commit else ""
    lines = ["| clients | trained/round | s/round | round 1 s | round 1 / later | run s | peak memory MB "
             "| of which flwr-simulation MB | Ray actors MB | clients with state | client state MB | run folder MB "
             "| failed replies | final accuracy | MB sent |" + extra,
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if with_commit else "")]
    for r in sorted(rows, key=lambda r: r["clients"]):
        kinds = r["peak_by_kind"]
        lines.append(f"| {r['clients']:,} | {r['per_round']:.0f} | {r['round_s']:.2f} | {r['round1_s']:.1f} | "
                     f"{r['round1_s'] / r['round_s']:.1f} | {r['wall_s']:.0f} | {r['peak_mb']:.0f} | "
                     f"{kinds.get('flwr-simulation', 0):.0f} | {kinds.get('ClientAppActor', 0):.0f} | "
                     f"{r['state_folders']:,} | {r['state_mb']:.1f} | {r['run_dir_mb']:.1f} | {r['failed']} | "
                     f"{r['accuracy']:.4f} | {r['bytes_total'] / MB:.1f} |" + (f" `{r['commit']}` |" if with_commit
                                                                               else ""))
    return lines


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets for the largest client count measured, each met or missed with the figure reached."""
    if not rows:
        return []
    r = max(rows, key=lambda r: r["clients"])
    checks = [(f"round 1 at most 3x a later round: {r['round1_s']:.1f} s against {r['round_s']:.2f} s, "
               f"{r['round1_s'] / r['round_s']:.1f}x", r["round1_s"] <= 3 * r["round_s"]),
              (f"the whole run under 8 GiB: peak {r['peak_mb'] / 1024:.2f} GiB", r["peak_mb"] < 8 * 1024),
              (f"finished within 1 hour: {r['wall_s'] / 60:.1f} min", r["wall_s"] < 3600)]
    return ["", f"Targets at {r['clients']:,} clients x {r['rounds']} rounds:", "",
            *[f"- {'met' if ok else '**missed**'}: {text}" for text, ok in checks]]


def render(rows: list[dict[str, Any]], args: argparse.Namespace, gpu: str) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commits = sorted({r["commit"] for r in rows})
    lines = [
        "# Scale: clients per machine, deployment, devices", "",
        f"Rendered {when}. Clients measured at commit {', '.join(f'`{c}`' for c in commits)} on {os.cpu_count()} "
        f"CPU cores ({platform.processor() or platform.machine()}, shared with other work), torch "
        f"{torch.__version__}, flwr {version('flwr')}, ray {version('ray')}. Command: `python benchmarks/scale.py "
        f"--clients N`, one invocation per client count (rows kept in `scale_clients.json`).", "",
        "## Clients on one machine", "",
        f"`{'+'.join(PRESETS)}` (the flagship on Fashion-MNIST, lenet5: 60,000 training examples split N ways, "
        f"6 each at 10,000 clients), {args.fraction:.0%} of the clients trained per round and at least 1 (so 10 "
        f"clients train 1 a round), {args.rounds} rounds, seed 0, Simulation Engine (Ray) launched as `fedcomp run` "
        "launches it (`flower-superlink --simulation`, `flwr run`), `server.discovery = sampled` (no node is "
        "contacted unless sampled: no setup query), `client.state = disk`.", "",
        "s/round is the median `round_seconds` of rounds 2 and later; round 1 s is the first round's (from the "
        "server's start to the end of its central evaluation; it includes the Ray actors' start, importing torch "
        "and fedcomp and loading the dataset, which its messages wait for). Run s is the whole run's wall time, "
        "Ray's start-up included. Peak memory is the largest sum of PSS over every process of the run, "
        "sampled every 0.5 s. "
        "Client state is `<run folder>/client-state` at the end of the run (each client that trained keeps its "
        "two newest rounds: its copy of the global model's counts and its error-feedback residual); run folder "
        "is everything the run wrote, client state included.", "",
    ]
    lines += table(rows)
    lines += targets(rows)
    if EARLIER.is_file():
        lines += ["", "### Earlier commits", "",
                  "The same measurement before later changes (their commit in the last column), kept in "
                  "`scale_clients_earlier.json`: before `iid` partitions were cut from one read of the shuffled "
                  "column, each Ray actor's first message made one flwr-datasets select per client, which round 1 "
                  "waited for.", "",
                  *table(json.loads(EARLIER.read_text()), with_commit=True)]
    if DEPLOY.is_file():
        body = DEPLOY.read_text().splitlines()
        body = body[1:] if body and body[0].startswith("# ") else body  # its title becomes this heading
        lines += ["", "## Deployment", "", "Quoted from [deploy.md](deploy.md) (`benchmarks/deploy_bench.py`).",
                  *[("#" + line if line.startswith("#") else line) for line in body]]
    lines += ["", "## GPU", "", gpu, ""]
    return "\n".join(lines)


NO_GPU = ("Not measured: no GPU machine was lent to this task, so neither the CPU-vs-GPU seconds per round of "
          "resnet20 on CIFAR-shaped data nor the compression share of a GPU client round (resnet20, resnet18) "
          "were measured. The GPU plumbing (`sim.device`, `sim.client_gpus`, device-resident batches) is tested "
          "on CPU only.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 100, 1000, 10000])
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--gpu-results", type=Path, help="a markdown table measured on a GPU machine, quoted as is")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    commit = source_commit()
    kept = json.loads(ROWS.read_text()) if ROWS.is_file() else []
    runs = default_run_dir("scale")
    for n in args.clients:
        row = {**clients_row(n, args.fraction, args.rounds, runs), "commit": commit}
        kept = [r for r in kept if r["clients"] != n] + [row]
        ROWS.write_text(json.dumps(kept, indent=1))
        print({k: v for k, v in row.items() if k != "peak_by_kind"}, flush=True)
    gpu = args.gpu_results.read_text() if args.gpu_results else NO_GPU
    text = render(kept, args, gpu)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
