"""Starting Flower's processes for one run and stopping every one of them afterwards.

Each run gets a random token in its processes' environment (``FEDCOMP_RUN_TOKEN``). Every
process started for the run inherits it, including those Flower and Ray spawn on their
own, so `stop_all` finds them by the token even when they left the process group, and with
them every process below them (`processes_with_token`): Ray's agents rename themselves with
setproctitle, which overwrites what ``/proc/PID/environ`` shows of their environment.

The processes outlive a parent that dies without cleaning up (SIGKILL, the OOM killer): the
SuperLink does not watch its parent. So each launch also starts a `watchdog`, a small process
that polls its parent (the process that launched the run) and, once that parent is gone, kills
the run's processes until none is left. It runs in its own session, so a signal
to the parent's process group does not end it first, and it does not carry the token itself.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from fedcomp.errors import FedcompError

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "FEDCOMP_RUN_TOKEN"
KILL_TIMEOUT = 10.0  # seconds SIGKILLed processes get to leave /proc
WATCH_INTERVAL = 0.5  # seconds between the watchdog's looks at its parent
ORPHAN_KILL_TIMEOUT = 60.0  # seconds the watchdog keeps killing a dead parent's processes (it has nothing else to do)


class LaunchError(FedcompError):
    """A Flower process could not start or the run did not finish."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for_port(port: int, process: subprocess.Popen, timeout: float, log: Path, name: str) -> None:
    """Return once ``port`` on 127.0.0.1 accepts connections; raise if ``process`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"{name} exited with code {process.returncode}:\n{tail(log)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise LaunchError(f"{name} did not start within {timeout:.0f} s:\n{tail(log)}")


def processes_with_env(name: str, value: str) -> list[int]:
    """PIDs (not this one) whose environment has ``name=value``."""
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


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time in clock ticks) of ``pid``; None once it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them in the process tree, as it is now."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (stat := _stat(int(proc.name))) is not None:
            children.setdefault(stat[0], []).append(int(proc.name))
    found, todo = set(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child != os.getpid():
                found.add(child)
                todo.append(child)
    return sorted(found)


def processes_with_token(token: str) -> list[int]:
    """PIDs of a run: those whose environment carries ``token`` and every process below them.

    The environment alone misses some: Ray's DashboardAgent and RuntimeEnvAgent, children of the
    raylet, rename themselves with setproctitle, which overwrites their ``/proc/PID/environ``.
    """
    return with_descendants(processes_with_env(TOKEN_VARIABLE, token))


class _Seen:
    """Every process a finder has returned, by PID and start time (so a reused PID is never taken for it)."""

    def __init__(self, find: Callable[[], list[int]]) -> None:
        self.find, self.started = find, {}

    def __call__(self) -> list[int]:
        for pid in self.find():
            if (stat := _stat(pid)) is not None:
                self.started.setdefault(pid, stat[1])
        return [pid for pid, start in self.started.items() if (stat := _stat(pid)) is not None and stat[1] == start]


def kill_until_gone(find: Callable[[], list[int]], timeout: float = KILL_TIMEOUT) -> list[int]:
    """SIGKILL every PID ``find`` returns, then whatever it finds next, until it finds none; the PIDs
    still found after ``timeout`` seconds ([] when all are gone).

    One pass is not enough: a process not yet killed may start another (Ray's raylet starts its
    agents and workers), and a killed one stays in ``/proc`` until the kernel has torn it down.
    """
    deadline = time.monotonic() + timeout
    while found := find():
        if time.monotonic() >= deadline:
            return found
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return []


def stop_all(processes: list[subprocess.Popen], token: str | None, grace: float = 10.0) -> None:
    """Terminate the run's process groups, wait up to ``grace`` seconds, then kill anything still
    carrying the run's token (with ``token`` None: the given processes' groups only); returns
    once they are gone."""
    # what was ever part of the run stays a straggler while alive: a raylet that exits on SIGTERM
    # leaves its agents without a parent to find them by
    stragglers = _Seen(lambda: processes_with_token(token) if token is not None else [])
    stragglers()
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (any(p.poll() is None for p in processes) or stragglers()):
        time.sleep(0.2)
    left = kill_until_gone(stragglers, KILL_TIMEOUT)
    if left:
        log.warning("processes %s of the run survived SIGKILL for %.0f s", left, KILL_TIMEOUT)
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


def start_watchdog(token: str) -> subprocess.Popen:
    """Start the `watchdog` of this process's run ``token``: once this process is gone, it stops the run's
    processes. The caller ends it (``terminate``) after stopping them itself."""
    return subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid()), token], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, start_new_session=True)


def watchdog(parent: int, token: str, interval: float = WATCH_INTERVAL, timeout: float = ORPHAN_KILL_TIMEOUT
             ) -> list[int]:
    """Wait until ``parent`` is no longer this process's parent (it died; the orphan was re-parented), then
    SIGKILL every process carrying ``token`` until none is left; return the PIDs still found after ``timeout``
    seconds ([] when all are gone).

    Nothing of the run is worth a graceful stop once the process that ran it is dead, and a SIGTERM would
    give Ray's daemons time to start more processes while they shut down.
    """
    while os.getppid() == parent:
        time.sleep(interval)
    return kill_until_gone(lambda: processes_with_token(token), timeout)


if __name__ == "__main__":  # the watchdog process: python -m fedcomp.launch.processes PARENT_PID TOKEN
    left = watchdog(int(sys.argv[1]), sys.argv[2])
    if left:
        print(f"fedcomp watchdog: processes {left} of a dead run survived SIGKILL for {ORPHAN_KILL_TIMEOUT:.0f} s",
              file=sys.stderr)
    sys.exit(1 if left else 0)
