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

All Flower output goes to ``flower.log`` in the run folder. Steps 1, 3 and 4 are `run_app`,
which `fedcomp.launch.deploy` shares: only the engine it brings up differs.

`SuperLink` keeps step 2 apart from step 3 so that a sweep submits many runs, several at a
time, to one SuperLink. Each run's streamed output goes to ``flower.log`` in its run folder,
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
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from fedcomp.data.registry import absolute_paths
from fedcomp.models.weights import absolute_reference
from fedcomp.launch.processes import (TOKEN_VARIABLE, LaunchError, free_port, start_watchdog, stop_all, tail,
                                     wait_for_port)
from fedcomp.records.results import read_diverged, read_rounds

APP_COMPONENTS = {"serverapp": "strategies.server_app:app", "clientapp": "clients.client_app:app"}
SimulationError = LaunchError  # the name callers of run_simulation catch


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


@dataclass
class Launch:
    """One run's private folder, environment and processes, handed to the engine's starter."""

    tmp: Path
    home: Path  # $FLWR_HOME: the starter writes config.toml here, naming the SuperLink connection "fedcomp"
    log: Path
    popen: dict[str, Any]  # keyword arguments for subprocess.Popen (env, output to the log, own session)
    bin_dir: Path
    token: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, name: str, args: list[str], **overrides: Any) -> subprocess.Popen:
        """Start ``bin_dir/name args`` as one of the run's processes (stopped with the run)."""
        process = subprocess.Popen([str(self.bin_dir / name), *args], **{**self.popen, **overrides})
        self.processes.append(process)
        return process

    def connection(self, port: int, tls: str = "insecure = true") -> None:
        """Write the run's ``config.toml``: one SuperLink connection ``fedcomp`` at 127.0.0.1:``port``."""
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "fedcomp"\n\n[superlink.fedcomp]\naddress = "127.0.0.1:{port}"\n{tls}\n')


@contextmanager
def launched(log: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[Launch]:
    """A private folder and environment for one run's Flower processes; all of them are stopped on exit.

    The processes share a fresh ``$FLWR_HOME``, write to ``log``, may import modules from the
    current directory, and carry the run's token so that none is left behind: not on exit, and
    not when this process dies without exiting (the run's watchdog then stops them).
    """
    bin_dir = Path(sys.executable).parent
    token = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="fedcomp-") as tmp, log.open("w") as log_file:
        home = Path(tmp) / "flwr-home"
        home.mkdir()
        env = {**os.environ, "FLWR_HOME": str(home), TOKEN_VARIABLE: token,
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
               **(extra_env or {})}
        popen = dict(env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                     start_new_session=True, cwd=tmp)
        launch = Launch(Path(tmp), home, log, popen, bin_dir, token)
        watchdog = start_watchdog(token)
        try:
            yield launch
        finally:
            stop_all(launch.processes, token)
            watchdog.terminate()
            watchdog.wait()


Starter = Callable[[Launch], list[str]]


def run_app(config: Mapping[str, Any], run_dir: Path, start_engine: Starter,
            on_round: Callable[[dict[str, Any]], None] | None = None,
            components: Mapping[str, str] = APP_COMPONENTS, extra_env: Mapping[str, str] | None = None
            ) -> dict[str, Any]:
    """Run fedcomp's app on an engine ``start_engine`` brings up; return the run's summary.

    ``start_engine(launch)`` starts the engine's processes with ``launch.start``, writes the
    SuperLink connection with ``launch.connection`` and returns extra ``flwr run`` arguments.
    Then `submit` runs the app, and every process of the run is stopped, whatever happened.
    """
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with launched(run_dir / "flower.log", extra_env) as launch:
        return submit(launch, config, run_dir, start_engine(launch), on_round, components)


def submit(launch: Launch, config: Mapping[str, Any], run_dir: Path, run_args: list[str],
           on_round: Callable[[dict[str, Any]], None] | None = None,
           components: Mapping[str, str] = APP_COMPONENTS) -> dict[str, Any]:
    """``flwr run APP fedcomp --stream run_args`` against the launch's SuperLink; follow ``rounds.jsonl``
    into ``on_round`` and return the summary. The run's output goes to its ``flower.log``."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # the engine's processes run in another folder: dataset and init.weights paths must not be relative
    config = {**config, "output.dir": str(run_dir), "dataset": absolute_paths(str(config["dataset"])),
              "init.weights": absolute_reference(str(config["init.weights"]))}
    log = run_dir / "flower.log"
    app_dir = Path(tempfile.mkdtemp(prefix="app-", dir=launch.tmp))
    write_app(app_dir, config, components)
    with ExitStack() as stack:
        # the run's output joins the launch's log when that is the run's own, else its own file
        output = {} if log == launch.log.resolve() else {"stdout": stack.enter_context(log.open("w")),
                                                          "stderr": subprocess.STDOUT}
        runner = launch.start("flwr", ["run", str(app_dir), "fedcomp", "--stream", *run_args], **output)
        try:
            _follow(run_dir, runner, on_round)
        finally:
            stop_all([runner], None)  # this run's client only; the engine stays up for the next
    diverged = read_diverged(run_dir)
    if diverged is not None:  # one line, and `fedcomp run` exits non-zero
        raise diverged
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise LaunchError(f"the run ended without a summary; the end of {log}:\n{tail(log)}")
    return json.loads(summary_path.read_text())


def federation_args(config: Mapping[str, Any], ray_cpus: int | None = None) -> list[str]:
    """``flwr run`` arguments giving the Simulation Engine its supernodes and each client's Ray resources.

    ``ray_cpus`` caps the CPUs the run's own Ray instance may use (Flower's ``init-args-num-cpus``).
    """
    federation = [f"num-supernodes={int(config['num_clients'])}",
                  f"client-resources-num-cpus={int(config['sim.client_cpus'])}",
                  f"client-resources-num-gpus={float(config['sim.client_gpus'])}"]
    if ray_cpus is not None:
        federation.append(f"init-args-num-cpus={int(ray_cpus)}")
    return [arg for item in federation for arg in ("--federation-config", item)]


def start_simulation_superlink(launch: Launch, startup_timeout: float = 60.0) -> None:
    """Start ``flower-superlink --simulation`` on a free port and point the launch's connection at it."""
    port = free_port()
    superlink = launch.start("flower-superlink", [
        "--insecure", "--simulation", "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(port),
        "--disable-runtime-dependency-installation"])
    wait_for_port(port, superlink, startup_timeout, launch.log, "flower-superlink")
    launch.connection(port)


class SuperLink:
    """One ``flower-superlink --simulation`` that takes any number of ``flwr run`` submissions, also concurrent ones.

    Use it as a context manager; leaving it stops the SuperLink and every process any of its
    runs started. Each run's ``flwr-simulation`` process starts its own Ray instance (see the
    module docstring); a sweep shares the SuperLink, not Ray.
    """

    def __init__(self, log: Path, startup_timeout: float = 60.0) -> None:
        self.log, self.startup_timeout = log, startup_timeout
        self._context: Any = None
        self._launch: Launch | None = None

    def __enter__(self) -> "SuperLink":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._context = launched(self.log)
        self._launch = self._context.__enter__()
        try:
            start_simulation_superlink(self._launch, self.startup_timeout)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
        self._context = self._launch = None

    def run(self, config: Mapping[str, Any], run_dir: Path, on_round: Callable[[dict[str, Any]], None] | None = None,
            components: Mapping[str, str] = APP_COMPONENTS, ray_cpus: int | None = None) -> dict[str, Any]:
        """Submit one run, follow it to the end and return its summary (``summary.json``)."""
        if self._launch is None:
            raise LaunchError("the SuperLink is not running (use it as a context manager)")
        return submit(self._launch, config, run_dir, federation_args(config, ray_cpus), on_round, components)


def run_simulation(config: Mapping[str, Any], run_dir: Path,
                   on_round: Callable[[dict[str, Any]], None] | None = None,
                   startup_timeout: float = 60.0, components: Mapping[str, str] = APP_COMPONENTS) -> dict[str, Any]:
    """Run one simulation to the end and return its summary (``summary.json``).

    ``components`` names the ServerApp and ClientApp (``module:attribute``); modules in the
    current directory are importable (it is put on ``PYTHONPATH``), as are ``python:`` plugins.
    A non-empty ``sim.ray_address`` reaches Ray as ``RAY_ADDRESS``: the Simulation Engine's
    ``ray.init()`` then joins that cluster instead of starting its own.
    """

    def simulation_engine(launch: Launch) -> list[str]:
        start_simulation_superlink(launch, startup_timeout)
        return federation_args(config)

    ray = {"RAY_ADDRESS": str(config["sim.ray_address"])} if config.get("sim.ray_address") else None
    return run_app(config, run_dir, simulation_engine, on_round, components, extra_env=ray)


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
