"""The warm ClientApp launcher: the shim hands its arguments over, a forked child runs Flower's command."""

import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from fedcomp.launch.warm import SOCKET_VARIABLE, install_shim


@pytest.fixture()
def launcher(tmp_path):
    folder = tmp_path / "warm"
    folder.mkdir(mode=0o700)
    path = folder / "launcher.sock"
    process = subprocess.Popen([sys.executable, "-m", "fedcomp.launch.warm", str(path), "", "json"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.1)
    yield path, install_shim(folder / "bin") / "flwr-clientapp"
    process.kill()
    process.wait()


def _shim(shim, path, *args):
    return subprocess.run([str(shim), *args], env={**os.environ, SOCKET_VARIABLE: str(path)}, capture_output=True,
                          text=True, timeout=60)


def test_the_socket_and_the_shim_are_the_owners_alone(launcher):
    path, shim = launcher
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(shim.stat().st_mode) == 0o700


def test_the_child_runs_flowers_clientapp_command_and_its_exit_code_comes_back(launcher):
    path, shim = launcher
    assert _shim(shim, path, "--help").returncode == 0  # argparse prints the usage and exits 0
    assert _shim(shim, path, "--no-such-option").returncode == 2  # argparse refuses it: exit 2
    # no token: Flower's own command exits non-zero, as a fresh flwr-clientapp would
    assert _shim(shim, path, "--runtime-api-address", "127.0.0.1:9").returncode != 0


def test_a_malformed_request_is_refused_and_the_launcher_keeps_serving(launcher):
    path, shim = launcher
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(path))
        conn.sendall(b'{"not": "a list"}\n')
        assert conn.makefile().readline().strip() == "2"
    assert _shim(shim, path, "--help").returncode == 0


def test_without_a_launcher_the_shim_runs_flowers_own_command(tmp_path):
    shim = install_shim(tmp_path / "bin") / "flwr-clientapp"
    done = _shim(shim, tmp_path / "gone.sock", "--help")
    assert done.returncode == 0 and "--runtime-api-address" in done.stdout
