"""Checkpoint and resume: a run killed with SIGKILL at any moment continues to the same results."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcomp.records import checkpoint
from fedcomp.exchange.client_state import DiskState, prune
from fedcomp.run.config import resolve
from fedcomp.errors import ConfigError
from fedcomp.records.results import read_rounds

ROOT = Path(__file__).resolve().parent.parent
# bidirectional FSFL with sampling (catch-up replays), error feedback both ways, and failing clients
SETTINGS = {"num_clients": 6, "rounds": 7, "fraction": 0.5, "up.scheme": "topk-uniform-ans", "up.fraction": 0.02,
            "down.scheme": "topk-uniform-ans", "down.fraction": 0.03, "fsfl.mode": "compensate",
            "faults.client_failure_rate": 0.2, "sync.history": 3}
LOOPBACK = ("import json, sys\n"
            "from clients.client_app import app\n"
            "from fedcomp.run.config import resolve\n"
            "from strategies.loopback import run_loopback\n"
            "run_loopback(resolve(json.loads(sys.argv[1])), app)\n")


def without(value, fragment: str = "seconds"):
    """A run file's content without the keys containing ``fragment`` (default: wall times, which no two runs
    share)."""
    if isinstance(value, dict):
        return {k: without(v, fragment) for k, v in value.items() if fragment not in k}
    if isinstance(value, list):
        return [without(v, fragment) for v in value]
    return value


def results(run_dir: Path) -> tuple[list, dict]:
    return without(read_rounds(run_dir)), without(json.loads((run_dir / "summary.json").read_text()))


def loopback(run_dir: Path, resume: bool = False) -> subprocess.Popen:
    config = {**SETTINGS, "output.dir": str(run_dir), "output.resume": resume}
    return subprocess.Popen([sys.executable, "-c", LOOPBACK, json.dumps(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def kill_after_row(process: subprocess.Popen, run_dir: Path, rows: int, delay: float) -> int:
    """SIGKILL ``process`` ``delay`` seconds after rounds.jsonl holds ``rows`` rows; the rows it had."""
    while len(read_rounds(run_dir)) < rows and process.poll() is None:
        time.sleep(0.05)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(read_rounds(run_dir))


@pytest.mark.slow
def test_a_run_killed_at_random_moments_resumes_to_the_uninterrupted_results(tmp_path):
    """Four SIGKILLs, at random moments in different rounds (one before any round ended, one during a
    resumed run): after each, ``output.resume`` continues, and the end matches a run never stopped."""
    whole = tmp_path / "whole"
    finish(loopback(whole))
    expected = results(whole)
    assert len(expected[0]) == SETTINGS["rounds"]

    pick = random.Random(11)
    broken = tmp_path / "broken"
    seen = []
    for i, rows in enumerate((0, 2, 4, 5)):
        process = loopback(broken, resume=i > 0)
        seen.append(kill_after_row(process, broken, rows, pick.uniform(0.0, 0.6)))
        if process.returncode == 0:
            break
        killed_at = checkpoint.load(broken)
        if killed_at is not None:  # the checkpoint is never ahead of the rows, nor more than one row behind
            assert killed_at.round <= len(read_rounds(broken)) <= killed_at.round + 1
    finish(loopback(broken, resume=True))
    assert len(set(seen)) >= 3, seen  # the kills fell in different rounds
    assert results(broken) == expected


def test_a_checkpoint_restores_the_rng_and_round_trips(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    states = checkpoint.rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    saved = checkpoint.Checkpoint(4, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
                                  {"residual/w": np.ones(3, np.float32), "history/2": np.frombuffer(b"ab", np.uint8)},
                                  {"version": 2, "meter": [{"round": 1}]}, [{"round": 1, "accuracy": 0.5}],
                                  {"accuracy": 0.1, "loss": 2.0}, states)
    checkpoint.save(tmp_path, saved)
    assert not list(tmp_path.glob("*.tmp"))
    loaded = checkpoint.load(tmp_path)
    assert loaded.round == 4 and loaded.rows == saved.rows and loaded.initial == saved.initial
    assert loaded.strategy_meta == saved.strategy_meta
    assert np.array_equal(loaded.global_tensors["w"], saved.global_tensors["w"])
    assert loaded.strategy_arrays["history/2"].tobytes() == b"ab"
    torch.rand(10), np.random.rand(10), random.random()
    checkpoint.restore_rng(loaded.rng)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip", b"\x93NUMPY garbage"])
def test_an_unreadable_checkpoint_is_one_clear_error(tmp_path, content):
    (tmp_path / checkpoint.CHECKPOINT).write_bytes(content)
    with pytest.raises(ConfigError, match="not a readable fedcomp checkpoint"):
        checkpoint.load(tmp_path)


def test_client_state_on_disk_keeps_two_rounds_and_resume_prunes_later_ones(tmp_path):
    store = DiskState(tmp_path, 3)
    assert store.load(1) == {}
    for server_round in (2, 5, 7):
        store.save(server_round, {"residual/w": np.full(4, server_round, np.float32)})
    assert store.rounds() == [5, 7]
    assert store.load(8)["residual/w"][0] == 7
    assert store.load(7)["residual/w"][0] == 5  # a round replayed after a resume sees what came before it
    assert prune(tmp_path, 6) == 1
    assert store.rounds() == [5]


def test_resume_refuses_a_folder_that_is_not_a_run_or_has_finished(tmp_path):
    from fedcomp.cli import resume_config

    with pytest.raises(ConfigError, match="no config.json"):
        resume_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(resolve({})))
    assert resume_config(tmp_path)["output.resume"] is True
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="has finished"):
        resume_config(tmp_path)


def fedcomp_run(args: list[str], mark: str) -> subprocess.Popen:
    """``fedcomp run ARGS`` with an environment mark that every process it starts inherits."""
    return subprocess.Popen([str(Path(sys.executable).parent / "fedcomp"), "run", *args], cwd=ROOT,
                            env={**os.environ, "FEDCOMP_TEST_RUN": mark}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
def test_fedcomp_run_killed_with_every_process_resumes_under_ray(tmp_path):
    """The real thing: ``fedcomp run`` on Ray, every process of it SIGKILLed in round 3, then
    ``fedcomp run --resume``; the results equal an uninterrupted run's."""
    from fedcomp.launch.processes import kill_until_gone, processes_with_env

    args = ["--preset", "fsfl-bidir", "--set", "num_clients=4", "--set", "rounds=5", "--set", "fraction=0.5"]
    whole = fedcomp_run([*args, "--out", str(tmp_path / "whole")], "whole")
    finish(whole)
    broken = tmp_path / "broken"
    process = fedcomp_run([*args, "--out", str(broken)], "broken")
    while len(read_rounds(broken)) < 2 and process.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    # the machine dies: every process at once, and none is left for the tests that follow
    assert kill_until_gone(lambda: processes_with_env("FEDCOMP_TEST_RUN", "broken")) == []
    process.wait()
    assert not (broken / "summary.json").exists()
    finish(fedcomp_run(["--resume", str(broken)], "resumed"))
    rows, summary = results(broken)
    expected_rows, expected_summary = results(tmp_path / "whole")
    # Flower's random node and run ids are varints in every message: a few bytes differ from run to run
    assert without(rows, "message_bytes") == without(expected_rows, "message_bytes")
    assert without(summary, "message_bytes") == without(expected_summary, "message_bytes")
    assert abs(summary["message_bytes_total"] - expected_summary["message_bytes_total"]) \
        < 0.005 * expected_summary["message_bytes_total"]

