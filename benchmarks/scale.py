"""How a simulation scales with the number of clients, and what the Deployment Engine costs, in one run.

For 10, 100 and 1,000 clients (digits split that many ways, ``--fraction`` of them trained
per round, ``--rounds`` rounds, seed 0) one full simulation runs (``run_simulation``: SuperLink,
Ray, the ClientApp). While it runs, a sampler reads every 0.5 s the proportional set size
(PSS, shared pages split between the processes sharing them) of every process the run
started, found by a marker in their environment; the peak of the sum is the run's peak
memory. A round's time is ``round_seconds`` (round 1 carries Ray's start-up and is left out).

The framework's share is separated from the clients' own work with the seconds each client
reports in its reply (local training, and compression for a compressed preset; measured in
the Ray actor, averaged over a round's clients, median over rounds 2..N) and the central
evaluation's seconds (measured in this process with fedcomp's functions). With ``A`` Ray
actors working in parallel and ``k`` clients per round:

    framework s per client = (s per round - central evaluation s) * A / k - training s - compression s

Then the same small run (3 clients, 2 rounds) runs under the Simulation Engine and under
``run_deployment`` (SuperLink + 3 SuperNodes on loopback, TLS, SuperNode authentication):
payload bytes, Flower's serialised message bytes and seconds per round side by side.

GPU rows (resnet20 on CIFAR-shaped data, CPU vs GPU) need the ``device`` machine; this
script marks them not measured unless ``--gpu-results FILE.md`` supplies a table measured there.

    .venv/bin/python benchmarks/scale.py            # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import torch

from fedcomp.run.config import resolve
from fedcomp.launch.deploy import run_deployment
from fedcomp.run.presets import preset
from fedcomp.run.experiment import eval_loader, run_model
from fedcomp.records.provenance import source_commit
from fedcomp.records.results import default_run_dir, read_rounds
from fedcomp.launch.simulation import run_simulation
from fedcomp.local.training import evaluate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.md"
MB = 2**20
MARK_NAME = "FEDCOMP_SCALE_BENCH"


class MemorySampler:
    """Peak summed PSS of the processes carrying ``MARK_NAME=mark`` in their environment."""

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
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if self.needle not in (proc / "environ").read_bytes():
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


def central_eval_seconds(config: dict[str, Any], repeats: int = 5) -> float:
    """Seconds of one central evaluation of the run's model, in this process (fedcomp's own functions)."""
    torch.set_num_threads(int(config["sim.threads"]))
    model, test = run_model(config), eval_loader(config)
    evaluate(model, test)
    start = time.perf_counter()
    for _ in range(repeats):
        evaluate(model, test)
    return (time.perf_counter() - start) / repeats


def scale_row(preset_name: str, num_clients: int, fraction: float, rounds: int, out: Path,
              state: str = "auto") -> dict[str, Any]:
    config = resolve(preset(preset_name), {"num_clients": num_clients, "fraction": fraction, "rounds": rounds,
                                           "seed": 0, "client.state": state})
    mark, run_dir = uuid.uuid4().hex, out / f"{preset_name}-clients{num_clients}-{state}"
    started = time.perf_counter()
    with MemorySampler(mark) as memory:
        summary = marked(mark, lambda: run_simulation(config, run_dir))
    wall = time.perf_counter() - started
    rows = read_rounds(run_dir)
    later = [r["round_seconds"] for r in rows if r["round"] > 1]
    per_round = statistics.median(len(r["clients"]) for r in rows)
    # seconds the clients report (measured in the Ray actor): local training, and compression when there is any
    train_s = statistics.median(r.get("train_seconds_mean", 0.0) for r in rows if r["round"] > 1)
    compress_s = statistics.median(r.get("compress_seconds_mean", 0.0) for r in rows if r["round"] > 1)
    eval_s = central_eval_seconds(config)
    actors = max(1, (os.cpu_count() or 1) // int(config["sim.client_cpus"]))
    round_s = statistics.median(later)
    framework = (round_s - eval_s) * actors / per_round - train_s - compress_s
    state_mb = sum(f.stat().st_size for f in (run_dir / "client-state").rglob("*.npz")) / MB
    return {"preset": preset_name, "state": state, "state_disk_mb": state_mb, "clients": num_clients,
            "per_round": per_round,
            "round_s": round_s, "round1_s": rows[0]["round_seconds"],
            "train_s": train_s, "compress_s": compress_s, "eval_s": eval_s, "framework_s": framework,
            "actors": actors,
            "peak_mb": memory.peak_total / MB, "peak_by_kind": {k: v / MB for k, v in memory.peak_by_kind.items()},
            "accuracy": summary["final_accuracy"], "bytes_total": summary["bytes_total"], "wall_s": wall}


def engines_row(engine: str, out: Path) -> dict[str, Any]:
    config = resolve({"num_clients": 3, "rounds": 2, "seed": 5})
    mark = uuid.uuid4().hex
    run = run_simulation if engine == "simulation" else run_deployment
    with MemorySampler(mark) as memory:
        summary = marked(mark, lambda: run(config, out / engine))
    rows = read_rounds(out / engine)
    return {"engine": engine, "bytes_up": summary["bytes_up"], "bytes_down": summary["bytes_down"],
            "message_bytes_up": summary["message_bytes_up"], "message_bytes_down": summary["message_bytes_down"],
            "round_s": [r["round_seconds"] for r in rows], "accuracy": summary["final_accuracy"],
            "peak_mb": memory.peak_total / MB}


def render(scale: list[dict[str, Any]], engines: list[dict[str, Any]], args: argparse.Namespace, commit: str,
           seconds: float, gpu: str) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Scale: clients per machine, engines, devices", "",
        f"Measured {when} at commit `{commit}` in one invocation ({seconds:.0f} s) on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}, shared with other work), torch {torch.__version__}, "
        f"flwr {version('flwr')}, ray {version('ray')}. "
        f"Command: `python benchmarks/scale.py {' '.join(sys.argv[1:])}`.", "",
        f"## Clients on one machine (Simulation Engine, Ray, digits/cnn, fraction {args.fraction}, "
        f"{args.rounds} rounds)", "",
        "Preset `default` is dense FedAvg; a compressed preset adds the state each client keeps between rounds "
        "(its copy of the global model when bidirectional, and its error-feedback residual). `client.state` "
        "says where: `memory` is Flower's `context.state`, which the simulation process holds for every node; "
        "`disk` is `<run folder>/client-state/`, the two newest rounds per client (what `auto`, the default, "
        "picks under `fedcomp run`). State on disk is its size at the end of the run.", "",
        "s/round is the median `round_seconds` of rounds 2..N (round 1, with Ray's start-up, is shown apart). "
        "Peak memory is the largest sum of PSS over every process of the run, sampled every 0.5 s. Training and "
        "compression s/client are what the clients report (measured in the Ray actor); central evaluation s is "
        "measured directly with fedcomp's functions; framework s/client = (s/round - evaluation s) x actors / "
        "clients per round - training s - compression s: everything else in a client's turn (Ray and Flower "
        "messaging, building the model, decoding, state handling).", "",
        "| preset | client.state | clients | trained/round | Ray actors | s/round | round 1 s | training s/client "
        "| compression s/client | central eval s "
        "| framework s/client | peak memory MB | of which flwr-simulation MB | Ray actors MB | final accuracy "
        "| MB sent | state on disk MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in scale:
        kinds = r["peak_by_kind"]
        lines.append(f"| {r['preset']} | {r['state']} | {r['clients']} | {r['per_round']:.0f} | {r['actors']} | "
                     f"{r['round_s']:.3f} | "
                     f"{r['round1_s']:.1f} | {r['train_s'] * 1000:.1f} ms | {r['compress_s'] * 1000:.1f} ms | "
                     f"{r['eval_s'] * 1000:.1f} ms | "
                     f"{r['framework_s'] * 1000:.1f} ms | {r['peak_mb']:.0f} | {kinds.get('flwr-simulation', 0):.0f} | "
                     f"{kinds.get('ClientAppActor', 0):.0f} | {r['accuracy']:.4f} | {r['bytes_total'] / MB:.1f} | "
                     f"{r['state_disk_mb']:.1f} |")
    if engines:
        lines += _engine_lines(engines)
    lines += ["", "## GPU", "", gpu, ""]
    return "\n".join(lines)


def _engine_lines(engines: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## The same run on both engines (3 clients, 2 rounds, seed 5)", "",
              "Deployment: `run_deployment` (`fedcomp deploy-local`): one SuperLink and 3 SuperNodes on 127.0.0.1, "
              "TLS with certificates generated for the run, SuperNode authentication with keys registered through "
              "`flwr supernode register`. Payload bytes are the meter's; message bytes are Flower's serialised "
              "messages (they differ between runs by a few bytes of varint-coded random ids).", "",
              "| engine | payload up B | payload down B | message up B | message down B | s per round | "
              "final accuracy | peak memory MB |", "|---|---|---|---|---|---|---|---|"]
    for r in engines:
        lines.append(f"| {r['engine']} | {r['bytes_up']} | {r['bytes_down']} | {r['message_bytes_up']} | "
                     f"{r['message_bytes_down']} | {', '.join(f'{s:.1f}' for s in r['round_s'])} | "
                     f"{r['accuracy']:.4f} | {r['peak_mb']:.0f} |")
    same = engines[0]["bytes_up"] == engines[1]["bytes_up"] and engines[0]["bytes_down"] == engines[1]["bytes_down"]
    return lines + ["", f"Payload bytes equal under both engines: **{'yes' if same else 'NO'}**."]


NO_GPU = ("Not measured: no GPU machine was lent to this task, so neither the CPU-vs-GPU seconds per round of "
          "resnet20 on CIFAR-shaped data nor the compression share of a GPU client round (resnet20, resnet18) "
          "were measured. The GPU plumbing (`sim.device`, `sim.client_gpus`, device-resident batches) is tested "
          "on CPU only.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--state-presets", nargs="*", default=[],
                        help="compressed presets also run at the largest client count (client state's cost)")
    parser.add_argument("--client-states", nargs="+", default=["memory", "disk"], choices=["memory", "disk"],
                        help="where the state presets' clients keep their state (one run each)")
    parser.add_argument("--skip-engines", action="store_true", help="leave out the deployment comparison")
    parser.add_argument("--gpu-results", type=Path, help="a markdown table measured on a GPU machine, quoted as is")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    commit = source_commit()
    runs = default_run_dir("scale")
    scale = []
    plan = [("default", n, "auto") for n in args.clients] + [
        (p, max(args.clients), state) for p in args.state_presets for state in args.client_states]
    for preset_name, n, state in plan:
        scale.append(scale_row(preset_name, n, args.fraction, args.rounds, runs, state))
        print({k: v for k, v in scale[-1].items() if k != "peak_by_kind"}, flush=True)
    engines = [] if args.skip_engines else [engines_row(e, runs) for e in ("simulation", "deployment")]
    for row in engines:
        print(row, flush=True)
    gpu = args.gpu_results.read_text() if args.gpu_results else NO_GPU
    text = render(scale, engines, args, commit, time.perf_counter() - started, gpu)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
