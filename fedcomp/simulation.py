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

`SuperLink` keeps step 2 apart from step 3 so that a sweep submits many runs, several at a
time, to one SuperLink. The run's streamed output goes to ``flower.log`` in the run folder,
the SuperLink's own (and that of the ``flwr-simulation`` processes it launches) to
``superlink.log``.

Why not one Ray instance for a whole sweep: Flower 1.42's Ray backend sizes every run's
actor pool from the *whole* cluster (``pool_size_from_resources`` reads ``ray.nodes()``
totals), so two runs on one shared cluster each create as many actors as the cluster has
CPUs. Measured here (one ``ray start`` head, ``RAY_ADDRESS`` set, two concurrent ``flwr run``
submissions): the second run's actors stayed pending until the first run ended, so the runs
were serialised, and two runs that each got part of their actors would wait on each other's
pending actors for ever. A ``ray start`` head also writes a machine-wide address file that
every other plain ``ray.init()`` on the machine would join. So each run keeps its own Ray,
capped with ``init-args-num-cpus``.
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


def processes_with_env(name: str, value: str) -> list[int]:
    """PIDs (not this one) whose environment has ``name=value``.

    With `TOKEN_VARIABLE` and a SuperLink's token: the SuperLink and all it spawned, Ray included.
    """
    needle = f"{name}={value}".encode()
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


def _stop_all(processes: list[subprocess.Popen], token: str | None) -> None:
    """Terminate the processes' groups, then anything else still carrying ``token`` (if given)."""
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    def stragglers() -> list[int]:
        return processes_with_env(TOKEN_VARIABLE, token) if token is not None else []

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (any(p.poll() is None for p in processes) or stragglers()):
        time.sleep(0.2)
    for pid in stragglers():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


class SuperLink:
    """One ``flower-superlink --simulation`` that takes any number of ``flwr run`` submissions, also concurrent ones.

    Use it as a context manager; leaving it stops the SuperLink and every process any of its
    runs started. Each run's ``flwr-simulation`` process starts its own Ray instance (see
    `run`); a sweep shares the SuperLink, not Ray.
    """

    def __init__(self, log: Path | None = None, startup_timeout: float = 60.0) -> None:
        self.log = log
        self.startup_timeout = startup_timeout
        self.token = uuid.uuid4().hex
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._processes: list[subprocess.Popen] = []
        self._env: dict[str, str] = {}

    def __enter__(self) -> "SuperLink":
        self._tmp = tempfile.TemporaryDirectory(prefix="fedcomp-", ignore_cleanup_errors=True)
        tmp = Path(self._tmp.name)
        home, port, bin_dir = tmp / "flwr-home", _free_port(), Path(sys.executable).parent
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "fedcomp"\n\n[superlink.fedcomp]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        self._env = {**os.environ, "FLWR_HOME": str(home), TOKEN_VARIABLE: self.token,
                     "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
                     "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
        log = self.log or tmp / "superlink.log"
        try:
            with log.open("w") as log_file:
                self._processes.append(subprocess.Popen(
                    [str(bin_dir / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
                     "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"],
                    **self._popen(log_file)))
            _wait_for_port(port, self._processes[0], self.startup_timeout, log)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _stop_all(self._processes, self.token)
        self._processes = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _popen(self, log_file: Any) -> dict[str, Any]:
        return dict(env=self._env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, cwd=self._tmp.name if self._tmp else None)

    def run(self, config: Mapping[str, Any], run_dir: Path, on_round: Callable[[dict[str, Any]], None] | None = None,
            components: Mapping[str, str] = APP_COMPONENTS, ray_cpus: int | None = None) -> dict[str, Any]:
        """Submit one run, follow it to the end and return its summary (``summary.json``).

        ``ray_cpus`` caps the CPUs the run's own Ray instance may use (Flower's
        ``init-args-num-cpus``); by default Ray takes every CPU of the machine.
        """
        if self._tmp is None:
            raise SimulationError("the SuperLink is not running (use it as a context manager)")
        run_dir = run_dir.resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        config = {**config, "output.dir": str(run_dir), "dataset": absolute_paths(str(config["dataset"]))}
        log = run_dir / "flower.log"
        app_dir = Path(tempfile.mkdtemp(prefix="app-", dir=self._tmp.name))
        write_app(app_dir, config, components)
        federation = [f"num-supernodes={int(config['num_clients'])}",
                      f"client-resources-num-cpus={int(config['sim.client_cpus'])}"]
        if ray_cpus is not None:
            federation.append(f"init-args-num-cpus={int(ray_cpus)}")
        with log.open("w") as log_file:
            runner = subprocess.Popen(
                [str(Path(sys.executable).parent / "flwr"), "run", str(app_dir), "fedcomp", "--stream",
                 *(arg for item in federation for arg in ("--federation-config", item))], **self._popen(log_file))
            self._processes.append(runner)
            try:
                _follow(run_dir, runner, on_round)
            finally:
                _stop_all([runner], None)  # this run's client only; the SuperLink stays
        summary_path = run_dir / "summary.json"
        if not summary_path.is_file():
            raise SimulationError(f"the simulation ended without a summary; the end of {log}:\n{_tail(log)}")
        return json.loads(summary_path.read_text())


def run_simulation(config: Mapping[str, Any], run_dir: Path,
                   on_round: Callable[[dict[str, Any]], None] | None = None,
                   startup_timeout: float = 60.0, components: Mapping[str, str] = APP_COMPONENTS) -> dict[str, Any]:
    """Run one simulation to the end on a SuperLink of its own and return its summary (``summary.json``).

    ``components`` names the ServerApp and ClientApp (``module:attribute``); modules in the
    current directory are importable (it is put on ``PYTHONPATH``), as are ``python:`` plugins.
    """
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with SuperLink(run_dir / "superlink.log", startup_timeout) as link:
        return link.run(config, run_dir, on_round, components)


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
