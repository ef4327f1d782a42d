"""End to end through Flower's Simulation Engine on Ray, via the supported `flwr run` path."""

import json
import re
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from fedcomp.run.config import resolve
from fedcomp.run.presets import preset
from fedcomp.launch.processes import processes_with_env
from fedcomp.launch.simulation import TOKEN_VARIABLE, run_simulation
from conftest import ROOT

FEDCOMP = str(Path(sys.executable).parent / "fedcomp")
SMALL = {"num_clients": 3, "rounds": 2, "seed": 3}


def ray_processes() -> list[str]:
    """Live Ray and SuperLink processes, each with the test mark and run token it carries, if any, to
    tell which run left it. Zombies are left out: a killed run's workers whose parent died wait for
    a PID 1 that reaps them (a container's may not); they run nothing and hold nothing."""
    out = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout.splitlines()
    found = []
    for line in out:
        pid, stat, args = (line.split(None, 2) + ["", ""])[:3]
        if not stat.startswith("Z") and ("ray::" in args or "raylet" in args or "flower-superlink" in args):
            marks = [v.decode(errors="replace") for v in _environ(Path(f"/proc/{pid}"))
                     if v.startswith((b"FEDCOMP_TEST_RUN=", TOKEN_VARIABLE.encode()))]
            found.append(f"{stat} {args[:60]} {marks}")
    return found


# every process of this module's run carries this mark (set in the environment it inherits), so that the
# leftover check sees only this run, not another session's runs alive on the machine
TEST_MARK = "FEDCOMP_TEST_RUN"
RUN_MARK = f"test_simulation-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    rows = []
    saved = os.environ.get(TEST_MARK)
    os.environ[TEST_MARK] = RUN_MARK
    try:
        summary = run_simulation(resolve({**SMALL, "output.dump_updates": True}), run_dir, on_round=rows.append)
    finally:
        if saved is None:
            del os.environ[TEST_MARK]
        else:
            os.environ[TEST_MARK] = saved
    return run_dir, summary, rows


@pytest.mark.slow
def test_simulation_writes_exact_results(finished_run):
    run_dir, summary, rows = finished_run
    for name in ("config.json", "rounds.jsonl", "summary.json", "accuracy_vs_bytes.png", "flower.log",
                 "updates/r0001.npz", "updates/r0002.npz"):
        assert (run_dir / name).is_file(), name
    assert [r["round"] for r in rows] == [1, 2]  # progress saw every round
    lines = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert lines == rows
    config = json.loads((run_dir / "config.json").read_text())
    assert config["num_clients"] == 3 and config["output.dir"] == str(run_dir.resolve())
    from fedcomp.run.experiment import run_model
    from fedcomp.compress.params import ParamManifest

    manifest = ParamManifest.from_model(run_model(config))
    per_message = manifest.dense_bytes + 128 * len(manifest)
    for row in lines:
        assert len(row["clients"]) == 3
        assert sorted(c["partition_id"] for c in row["clients"]) == [0, 1, 2]
        assert all(c["bytes_up"] == c["bytes_down"] == per_message for c in row["clients"])
        for key in ("bytes_up", "bytes_down", "message_bytes_up", "message_bytes_down"):
            assert row[key] == sum(c[key] for c in row["clients"])
        assert row["dense_bytes_up"] == 3 * manifest.dense_bytes
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in lines)
    assert summary["bytes_total"] == summary["bytes_up"] + summary["bytes_down"] == lines[-1]["cum_bytes_total"]
    assert summary["fedavg_bytes_total"] == 2 * 2 * 3 * manifest.dense_bytes
    assert summary["compression_ratio"] == pytest.approx(manifest.dense_bytes / per_message)
    assert summary["final_accuracy"] == lines[-1]["accuracy"] > 0.5
    with np.load(run_dir / "updates" / "r0002.npz", allow_pickle=False) as updates:
        assert len(updates.files) == 3 * len(manifest)
        assert f"c1/{manifest.names[0]}" in updates.files


@pytest.mark.slow
def test_nothing_is_left_running(finished_run):
    assert [p for p in ray_processes() if f"{TEST_MARK}={RUN_MARK}" in p] == []
    assert processes_with_env(TEST_MARK, RUN_MARK) == []


def _environ(proc: Path) -> list[bytes]:
    try:
        return (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return []


@pytest.mark.slow
def test_cli_run_repeats_the_same_run_and_compare_reads_both(finished_run, tmp_path):
    run_dir, summary, rows = finished_run
    again = tmp_path / "again"
    args = [FEDCOMP, "run", "--preset", "fedavg", "--out", str(again), "--set", "output.dump_updates=true"]
    args += [arg for k, v in SMALL.items() for arg in ("--set", f"{k}={v}")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "round   2" in done.stdout and "final accuracy" in done.stdout
    repeat = [json.loads(line) for line in (again / "rounds.jsonl").read_text().splitlines()]
    for first, second in zip(rows, repeat):
        for key in ("accuracy", "loss", "bytes_up", "bytes_down", "dense_bytes_up", "dense_bytes_down"):
            assert first[key] == second[key], key
    table = subprocess.run([FEDCOMP, "compare", str(run_dir), str(again), "--out", str(tmp_path / "cmp.md")],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    text = (tmp_path / "cmp.md").read_text()
    assert text.count("| ") > 10 and run_dir.name in text and "again" in text
    assert (tmp_path / "cmp.png").stat().st_size > 1000


@pytest.mark.parametrize("args,fragment", [
    (["run", "--set", "bogus=1"], "unknown setting 'bogus'"),
    (["run", "--set", "partition=zipf"], "must be one of iid, dirichlet, pathological"),
    (["run", "--preset", "nope"], "unknown preset 'nope'"),
    (["run", "--set", "dataset=cifar10", "--set", "data.dir=/nonexistent"], "cifar-10-batches-py"),
    (["run", "--config", "/nonexistent.toml"], "config file not found"),
    (["run", "--set", "dataset=clients:/nonexistent"], "clients:/nonexistent: no such folder"),
    (["run", "--set", "dataset=csv:/nonexistent.csv"], "table file not found: /nonexistent.csv"),
    (["compare", "/nonexistent"], "not a finished run"),
    (["presets", "--show", "nope"], "unknown preset 'nope'"),
    (["run", "--set", "up.scheme=stc", "--set", "partial.groups=nothing*"], "selects no tensor"),
])
def test_cli_bad_input_is_one_readable_error(args, fragment):
    done = subprocess.run([FEDCOMP, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "400"}, cwd=ROOT)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert fragment in output
    assert "Traceback" not in output


def test_presets_lists_every_preset():
    from fedcomp.run.presets import PRESETS

    done = subprocess.run([FEDCOMP, "presets"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert [line.split()[0] for line in done.stdout.splitlines()] == list(PRESETS)


@pytest.mark.slow
def test_a_compressed_bidirectional_run_under_ray_keeps_clients_in_sync(tmp_path):
    """fsfl-bidir with sampling: client state survives between rounds in Flower's simulation engine."""
    config = resolve(preset("fsfl-bidir"), {"num_clients": 4, "rounds": 4, "fraction": 0.5, "seed": 1})
    summary = run_simulation(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    log = (tmp_path / "run" / "flower.log").read_text()
    assert not re.search(r"round \d+: node \d+ failed", log), log[-2000:]
    assert all(len(r["clients"]) == 2 for r in rows)
    assert rows[0]["bytes_down"] == 0  # W_0 comes from the seed on every party
    assert all(r["bytes_down"] > 0 for r in rows[1:])  # catch-up payloads afterwards
    assert all(r["compress_seconds_mean"] > 0 and r["train_seconds_max"] >= r["train_seconds_mean"] for r in rows)
    assert summary["compression_ratio"] > 50
    assert summary["bytes_total"] == sum(r["bytes_up"] + r["bytes_down"] for r in rows)
