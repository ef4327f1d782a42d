"""No orphans: when the process that launched a run dies without cleaning up (SIGKILL), the run's
watchdog stops every process of the run within seconds.

Each test marks what it starts with its own ``FEDCOMP_TEST_RUN`` value, which every process of the
run inherits (the watchdog included), and looks only for that mark: other runs on the machine are
never touched.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import ROOT
from fedcomp.launch.processes import TOKEN_VARIABLE, kill_until_gone, processes_with_env
from fedcomp.records.results import read_rounds

MARK = "FEDCOMP_TEST_RUN"
GONE_WITHIN = 15.0  # seconds after the parent's death by which nothing of the run may be alive

# a launcher: its watchdog, then a child carrying the run token that keeps starting children in new
# sessions (as Ray's raylet starts its agents); then it waits to be killed
LAUNCHER = """
import os, subprocess, sys, time
from fedcomp.launch.processes import TOKEN_VARIABLE, start_watchdog
token = sys.argv[1]
start_watchdog(token)
spawner = "import subprocess, time\\nwhile True:\\n    subprocess.Popen(['sleep', '60'], start_new_session=True)\\n" \\
          "    time.sleep(0.05)\\n"
subprocess.Popen([sys.executable, "-c", spawner], env={**os.environ, TOKEN_VARIABLE: token}, start_new_session=True)
time.sleep(600)
"""


def marked(mark: str) -> list[int]:
    return processes_with_env(MARK, mark)


def commands(pids: list[int]) -> list[str]:
    """The command lines of ``pids`` (for messages and for checking what was running)."""
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip())
        except OSError:
            pass
    return out


def described(pids: list[int]) -> list[str]:
    """Each PID's command, state, parent and whether it carries a run token (for failure messages)."""
    out = []
    for pid, command in zip(pids, commands(pids)):
        try:
            state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            token = TOKEN_VARIABLE.encode() in Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        out.append(f"{pid} {command[:60]} state {state} parent {parent} token {token}")
    return out


def seconds_until_gone(mark: str, timeout: float) -> float:
    """Seconds until no process carries ``mark``; fails the test, naming them, after ``timeout``."""
    start = time.monotonic()
    while marked(mark):
        if time.monotonic() - start > timeout:
            pytest.fail(f"alive {timeout:.0f} s after the parent was killed: {described(marked(mark))}")
        time.sleep(0.1)
    return time.monotonic() - start


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)


def test_the_watchdog_stops_the_run_when_its_launcher_is_killed():
    mark, token = uuid.uuid4().hex, uuid.uuid4().hex
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, MARK: mark, "PYTHONPATH": path}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, token], env=env, start_new_session=True)
    try:
        # the spawner and at least two of its children carry the token (the launcher and the watchdog do not)
        wait_for(lambda: len(processes_with_env(TOKEN_VARIABLE, token)) >= 3, 30, "the run starting")
        wait_for(lambda: any("fedcomp.launch.processes" in c for c in commands(marked(mark))), 30, "the watchdog")
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        seconds_until_gone(mark, GONE_WITHIN)
        assert processes_with_env(TOKEN_VARIABLE, token) == []
    finally:
        kill_until_gone(lambda: marked(mark))


def test_a_launch_that_ends_normally_ends_its_watchdog(tmp_path):
    from fedcomp.launch.simulation import launched

    mark = uuid.uuid4().hex
    os.environ[MARK] = mark  # the watchdog inherits this process's environment
    try:
        with launched(tmp_path / "log") as launch:
            launch.start("python", ["-c", "import time; time.sleep(600)"])
            wait_for(lambda: len(marked(mark)) == 2, 30, "the child and the watchdog starting")
        assert marked(mark) == []
    finally:
        del os.environ[MARK]
        kill_until_gone(lambda: marked(mark))


@pytest.mark.slow
def test_fedcomp_run_killed_with_sigkill_leaves_nothing_running(tmp_path):
    """``fedcomp run`` on Ray, SIGKILLed (it alone) once its first round is recorded: its SuperLink,
    SuperExec, flwr-simulation and Ray processes are all gone a few seconds later."""
    mark = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    cli = subprocess.Popen([str(Path(sys.executable).parent / "fedcomp"), "run", "--set", "num_clients=3",
                            "--set", "rounds=50", "--out", str(run_dir)], cwd=ROOT, env={**os.environ, MARK: mark},
                           stdout=subprocess.DEVNULL, stderr=(tmp_path / "stderr").open("w"), start_new_session=True)
    try:
        wait_for(lambda: read_rounds(run_dir) or cli.poll() is not None, 300, "round 1")
        assert cli.poll() is None, f"fedcomp run exited with {cli.returncode} before round 1"
        running = " ".join(commands(marked(mark)))
        for name in ("flower-superlink", "flower-superexec", "flwr-simulation", "raylet"):
            assert name in running, f"{name} not among the run's processes: {running}"
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        try:
            took = seconds_until_gone(mark, GONE_WITHIN)
        finally:
            print((tmp_path / "stderr").read_text()[-2000:])  # the watchdog's complaint, if any
        print(f"nothing of the run alive {took:.1f} s after SIGKILL")
    finally:
        kill_until_gone(lambda: marked(mark))
