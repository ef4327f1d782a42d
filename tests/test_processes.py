"""Stopping a run's processes: nothing that carries the run's token outlives `stop_all`."""

import os
import subprocess
import sys
import uuid

from fedcomp.launch.processes import TOKEN_VARIABLE, kill_until_gone, processes_with_env, processes_with_token, stop_all

# a parent that keeps starting children in new sessions (as Ray's raylet starts its agents)
SPAWNER = ("import subprocess, time\n"
           "while True:\n"
           "    subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
           "    time.sleep(0.01)\n")


def spawner(name: str, value: str, **popen) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", SPAWNER], env={**os.environ, name: value}, **popen)
    while len(processes_with_env(name, value)) < 3:  # the parent and at least two children
        pass
    return process


def test_kill_until_gone_also_kills_what_appears_while_it_kills():
    mark = uuid.uuid4().hex
    process = spawner("FEDCOMP_TEST_RUN", mark)
    assert kill_until_gone(lambda: processes_with_env("FEDCOMP_TEST_RUN", mark)) == []
    process.wait(timeout=5)
    assert processes_with_env("FEDCOMP_TEST_RUN", mark) == []


def test_stop_all_leaves_nothing_that_carries_the_token():
    token = uuid.uuid4().hex
    process = spawner(TOKEN_VARIABLE, token, start_new_session=True)
    stop_all([process], token, grace=0.5)  # the children left the group: only the token finds them
    assert process.poll() is not None
    assert processes_with_env(TOKEN_VARIABLE, token) == []


def test_a_child_without_the_token_is_found_below_its_parent_and_stopped_with_it():
    """Ray's raylet starts agents whose environment may not show the token: the process tree finds them."""
    token, mark = uuid.uuid4().hex, uuid.uuid4().hex
    # the child's environment is only the mark: no token (as the agents were found)
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               f"subprocess.Popen(['sleep', '60'], env={{'FEDCOMP_TEST_RUN': '{mark}'}},\n"
                               "                 start_new_session=True)\n"
                               "time.sleep(60)\n"], env={**os.environ, TOKEN_VARIABLE: token},
                              start_new_session=True)
    try:
        while not processes_with_env("FEDCOMP_TEST_RUN", mark):
            pass
        child = processes_with_env("FEDCOMP_TEST_RUN", mark)
        assert TOKEN_VARIABLE.encode() not in open(f"/proc/{child[0]}/environ", "rb").read()
        assert processes_with_token(token) == sorted([parent.pid, *child])
        stop_all([parent], token, grace=0.5)
        assert processes_with_env("FEDCOMP_TEST_RUN", mark) == []
    finally:
        kill_until_gone(lambda: processes_with_env("FEDCOMP_TEST_RUN", mark))
