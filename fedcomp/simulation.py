"""Launching one simulation the way Flower supports it: ``flwr run`` against a SuperLink.

`run_simulation` does, in a private temporary folder and with every process its own:

1. writes a minimal Flower App (a ``pyproject.toml`` whose components are fedcomp's
   installed ServerApp and ClientApp, and whose ``[tool.flwr.app.config]`` is the fully
   resolved run configuration) and a ``$FLWR_HOME/config.toml`` naming one SuperLink;
2. starts ``flower-superlink --simulation`` on a free local port (Flower's Simulation
   Engine, Ray backend, runs there in a ``flwr-simulation`` subprocess);
3. submits the app with ``flwr run APP fedcomp --federation-config num-supernodes=N
   --stream`` and follows the run's ``rounds.jsonl`` to report progress;
4. stops the SuperLink and every process the run started, so nothing stays behind.

All Flower output goes to ``flower.log`` in the run folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from fedcomp.data.registry import absolute_paths
from fedcomp.errors import FedcompError
from fedcomp.results import read_rounds

APP_COMPONENTS = {"serverapp": "strategies.server_app:app", "clientapp": "clients.client_app:app"}
TOKEN_VARIABLE = "FEDCOMP_RUN_TOKEN"


class SimulationError(FedcompError):
    """The simulation could not start or did not finish."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_app(app_dir: Path, config: Mapping[str, Any], components: Mapping[str, str] = APP_COMPONENTS) -> None:
    """A Flower App folder whose components are ``components`` and whose run config defaults are ``config``."""
    app_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", 'name = "fedcomp-run"', 'version = "1.0.0"',
        'description = "A fedcomp simulation run"', 'license = "Apache-2.0"', "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "fedcomp"', "",
        "[tool.flwr.app.components]", *(f'{k} = "{v}"' for k, v in components.items()), "",
        "[tool.flwr.app.config]", *(f'"{k}" = {_toml_value(v)}' for k, v in config.items()), "",
    ]
    (app_dir / "pyproject.toml").write_text("\n".join(lines))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SimulationError(f"flower-superlink exited with code {process.returncode}:\n{_tail(log)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SimulationError(f"flower-superlink did not start within {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _processes_with_token(token: str) -> list[int]:
    """PIDs whose environment carries ``token`` (the run's SuperLink and all it spawned, Ray included)."""
    needle = f"{TOKEN_VARIABLE}={token}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _stop_all(processes: list[subprocess.Popen], token: str) -> None:
    """Terminate the run's process groups, then anything else still carrying the run's token."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (any(p.poll() is None for p in processes) or _processes_with_token(token)):
        time.sleep(0.2)
    for pid in _processes_with_token(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


def run_simulation(config: Mapping[str, Any], run_dir: Path,
                   on_round: Callable[[dict[str, Any]], None] | None = None,
                   startup_timeout: float = 60.0, components: Mapping[str, str] = APP_COMPONENTS) -> dict[str, Any]:
    """Run one simulation to the end and return its summary (``summary.json``).

    ``components`` names the ServerApp and ClientApp (``module:attribute``); modules in the
    current directory are importable (it is put on ``PYTHONPATH``), as are ``python:`` plugins.
    """
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, "output.dir": str(run_dir), "dataset": absolute_paths(str(config["dataset"]))}
    log = run_dir / "flower.log"
    bin_dir = Path(sys.executable).parent
    token = uuid.uuid4().hex
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="fedcomp-") as tmp, log.open("w") as log_file:
        home, app_dir, port = Path(tmp) / "flwr-home", Path(tmp) / "app", _free_port()
        home.mkdir()
        write_app(app_dir, config, components)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "fedcomp"\n\n[superlink.fedcomp]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        env = {**os.environ, "FLWR_HOME": str(home), TOKEN_VARIABLE: token,
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
        popen = dict(env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                     start_new_session=True, cwd=tmp)
        try:
            processes.append(subprocess.Popen(
                [str(bin_dir / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
                 "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"], **popen))
            _wait_for_port(port, processes[0], startup_timeout, log)
            federation = [f"num-supernodes={int(config['num_clients'])}",
                          f"client-resources-num-cpus={int(config['sim.client_cpus'])}"]
            runner = subprocess.Popen(
                [str(bin_dir / "flwr"), "run", str(app_dir), "fedcomp", "--stream",
                 *(arg for item in federation for arg in ("--federation-config", item))], **popen)
            processes.append(runner)
            _follow(run_dir, runner, on_round)
        finally:
            _stop_all(processes, token)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise SimulationError(f"the simulation ended without a summary; the end of {log}:\n{_tail(log)}")
    return json.loads(summary_path.read_text())


def _follow(run_dir: Path, runner: subprocess.Popen, on_round: Callable[[dict[str, Any]], None] | None) -> None:
    """Report each new row of rounds.jsonl until ``flwr run`` exits (or lingers well past the summary)."""
    reported, summary_seen = 0, None
    while True:
        if summary_seen is None and (run_dir / "summary.json").is_file():
            summary_seen = time.monotonic()
        finished = runner.poll() is not None or (summary_seen is not None and time.monotonic() - summary_seen > 60)
        rows = read_rounds(run_dir)
        for row in rows[reported:]:
            if on_round is not None:
                on_round(row)
        reported = len(rows)
        if finished:
            return
        time.sleep(0.5)
