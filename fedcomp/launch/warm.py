"""A warm ClientApp launcher: each message's ``flwr-clientapp`` process forked from a preloaded one.

Flower 1.42 runs every message in a fresh ``flwr-clientapp`` process (``fedcomp.launch.deploy``
says why no isolation mode avoids it), which pays for the interpreter, Flower's ClientApp
runtime, torch and the app's imports, and the dataset, before its handler runs: seconds per
message, every round. Here one process per deployment (the *launcher*) pays that once: it
imports Flower's ``flwr-clientapp`` command and the ClientApp's module, loads the run's
dataset, and then waits on a Unix socket. The SuperNodes find a small ``flwr-clientapp`` first
on their ``PATH`` (`install_shim`): it sends its arguments (the Runtime API address, the task's
token, ``--insecure`` or the root certificates, ``--parent-pid``) to the launcher, which forks a
child that runs Flower's own ``flwr_clientapp()`` with them, and answers the child's exit code.
A shim that finds no launcher (it died) runs Flower's ``flwr-clientapp`` itself, so a message is
never lost to the launcher: it only costs a fresh process again.

Nothing changes between SuperLink and SuperNodes (TLS, SuperNode authentication), nor between
SuperNode and ClientApp: the child speaks to the SuperNode's Runtime API exactly as the process
Flower would have started, with the same token and transport. The token travels from the shim to
the launcher over a socket in the run's private folder (mode 0600, in a 0700 folder), as it
travels in the command line Flower itself builds. The child runs the same code on the same
message; its handler seeds everything it draws, so replies (payload bytes, accuracy) are those of
a fresh process: `benchmarks/deploy_bench.py` and ``tests/test_deploy.py`` check them against the
simulation.

The launcher keeps torch single-threaded while it preloads, so no OpenMP worker threads exist
when it forks (a forked child cannot use a pool its parent started).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import socket
import sys
import traceback
import time
from pathlib import Path
from typing import Any, Mapping

from fedcomp.data.registry import absolute_paths
from fedcomp.launch.processes import LaunchError, tail
from fedcomp.launch.simulation import Launch

SOCKET_VARIABLE = "FEDCOMP_WARM_SOCKET"
COMMAND = "flwr-clientapp"  # the command Flower's SuperExec starts for each ClientApp task
ACCEPT_TIMEOUT = 10.0  # seconds a shim may take to send its arguments once connected

SHIM = """#!{python} -I
# fedcomp's warm launcher stands in for Flower's flwr-clientapp (fedcomp.launch.warm)
import json, os, socket, sys
try:
    launcher = socket.socket(socket.AF_UNIX)
    launcher.connect(os.environ["{variable}"])
except (OSError, KeyError):  # no launcher (it died): Flower's own command, started fresh
    os.execv("{real}", ["{real}", *sys.argv[1:]])
with launcher:
    launcher.sendall(json.dumps(sys.argv[1:]).encode() + b"\\n")
    answer = launcher.makefile().readline().strip()
sys.exit(int(answer) if answer.lstrip("-").isdigit() else 1)
"""


def install_shim(folder: Path) -> Path:
    """Write the ``flwr-clientapp`` stand-in into ``folder`` (put it first on the SuperNodes' PATH); the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / COMMAND
    shim.write_text(SHIM.format(python=sys.executable, variable=SOCKET_VARIABLE,
                                real=Path(sys.executable).parent / COMMAND))
    shim.chmod(0o700)
    return folder


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def _run_child(argv: list[str]) -> int:
    """In the forked child: Flower's ``flwr-clientapp`` with ``argv``; its exit code."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    sys.argv = [COMMAND, *argv]
    try:
        flwr_clientapp()
        return 0
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException:  # noqa: BLE001 (the child reports any failure as its exit code)
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def preload(modules: list[str], config: Mapping[str, Any] | None) -> None:
    """Import ``modules`` and Flower's ClientApp command; load the run's dataset when ``config`` is given."""
    import torch

    torch.set_num_threads(1)  # no OpenMP pool before a fork
    # torch.optim imports torch._dynamo on an optimizer's first step (1-2 s): once here, not in every child
    importlib.import_module("torch._dynamo")
    importlib.import_module("flwr.supernode.cli.flwr_clientapp")
    for module in modules:
        importlib.import_module(module)
    if config is not None:
        from fedcomp.run.experiment import run_dataset

        try:
            run_dataset(config)  # cached per process: a child whose run has the same data finds it loaded
        except Exception:  # noqa: BLE001 (the child loads it itself and reports any problem)
            traceback.print_exc()


def _read_request(conn: socket.socket) -> list[str] | None:
    """A shim's arguments, or None when it sent something else."""
    conn.settimeout(ACCEPT_TIMEOUT)
    try:
        argv = json.loads(conn.makefile().readline())
    except (OSError, ValueError):
        return None
    conn.settimeout(None)
    return argv if isinstance(argv, list) and all(isinstance(a, str) for a in argv) else None


def _answer(conn: socket.socket, code: int) -> None:
    try:
        conn.sendall(f"{code}\n".encode())
    except OSError:
        pass
    conn.close()


def serve(path: Path) -> None:
    """Listen on ``path``; for each shim, fork a child running ``flwr-clientapp`` and answer its exit code."""
    listener = socket.socket(socket.AF_UNIX)
    umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(umask)
    listener.listen(64)
    waiting: dict[int, socket.socket] = {}
    while True:
        if select.select([listener], [], [], 0.05)[0]:
            conn, _ = listener.accept()
            argv = _read_request(conn)
            if argv is None:
                _answer(conn, 2)
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in waiting.values():
                    other.close()
                conn.close()
                os._exit(_run_child(argv))
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in waiting:
                _answer(waiting.pop(pid), os.waitstatus_to_exitcode(status))


def start_launcher(launch: Launch, config: Mapping[str, Any], clientapp: str, timeout: float) -> dict[str, str]:
    """Start the run's launcher for the ClientApp ``clientapp`` (``module:attribute``) and wait until it
    listens; the environment a SuperNode needs to use it (the shim first on its PATH, the socket)."""
    folder = launch.tmp / "warm"
    folder.mkdir(mode=0o700)
    socket_path, config_path = folder / "launcher.sock", folder / "config.json"
    config_path.write_text(json.dumps({**config, "dataset": absolute_paths(str(config["dataset"]))}))
    process = launch.start(Path(sys.executable).name, ["-m", __name__, str(socket_path), str(config_path),
                                                      clientapp.partition(":")[0]])
    deadline = time.monotonic() + timeout
    while not socket_path.exists():
        if process.poll() is not None:
            raise LaunchError(f"the warm ClientApp launcher exited with code {process.returncode}:\n{tail(launch.log)}")
        if time.monotonic() > deadline:
            raise LaunchError(f"the warm ClientApp launcher did not start within {timeout:.0f} s:\n{tail(launch.log)}")
        time.sleep(0.2)
    env = launch.popen["env"]
    return {**env, "PATH": f"{install_shim(folder / 'bin')}{os.pathsep}{env['PATH']}",
            SOCKET_VARIABLE: str(socket_path)}


def main(argv: list[str]) -> None:
    """``python -m fedcomp.launch.warm SOCKET CONFIG.json MODULE...``: preload, then serve."""
    socket_path, config_path, modules = Path(argv[0]), argv[1], argv[2:]
    config = json.loads(Path(config_path).read_text()) if config_path else None
    preload(modules, config)
    serve(socket_path)


if __name__ == "__main__":
    main(sys.argv[1:])
