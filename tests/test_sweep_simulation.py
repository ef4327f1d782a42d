"""A real sweep: runs submitted to one SuperLink, two at a time, resumed, reported; and the CLI's errors."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fedcomp.analysis.report import build_report
from fedcomp.launch.processes import processes_with_env
from fedcomp.analysis.sweep import SweepPlan, load_index, run_sweep
from test_report import check_report

FEDCOMP = str(Path(sys.executable).parent / "fedcomp")
PLAN = SweepPlan("quick", {"rounds": 2, "num_clients": 2, "track.tensorboard": True}, {"seed": [0, 1]})


MARK = f"FEDCOMP_TEST_SWEEP={uuid.uuid4().hex}"  # inherited by every process the sweep starts


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    pytest.importorskip("tensorboard", reason="the sweep's runs track to TensorBoard: needs the `track` extra")
    folder = tmp_path_factory.mktemp("sweep")
    key, value = MARK.split("=")
    os.environ[key] = value
    try:
        run_sweep(PLAN, folder, jobs=2, cpus=2)
    finally:
        del os.environ[key]
    return folder


@pytest.mark.slow
def test_sweep_runs_in_parallel_on_one_superlink(sweep_dir):
    index = load_index(sweep_dir)
    assert [r["status"] for r in index["runs"]] == ["done", "done"], index
    runs = [sweep_dir / r["dir"] for r in index["runs"]]
    spans = [((d / "config.json").stat().st_mtime, (d / "summary.json").stat().st_mtime) for d in runs]
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # the two runs overlapped in time
    log = (sweep_dir / "superlink.log").read_text()
    assert log.count("Started task") >= 2  # both runs went to the sweep's one SuperLink
    for d in runs:
        summary = json.loads((d / "summary.json").read_text())
        assert summary["rounds"] == 2 and summary["bytes_total"] > 0
        assert list((d / "tensorboard").glob("events.out.tfevents.*"))  # the tracker ran inside the ServerApp
    deadline = time.monotonic() + 15  # a killed process may take a moment to leave /proc
    while processes_with_env(*MARK.split("=")) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {pid: _cmdline(pid) for pid in processes_with_env(*MARK.split("="))}
    assert left == {}  # SuperLink, flwr-simulation and both Ray instances are gone


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


@pytest.mark.slow
def test_resume_skips_finished_runs_and_report_matches(sweep_dir):
    before = {p: p.stat().st_mtime for p in sweep_dir.glob("runs/*/summary.json")}
    index = run_sweep(PLAN, sweep_dir, jobs=2, run_fn=lambda *a: pytest.fail("a finished run was redone"))
    assert all(r["status"] == "done" for r in index["runs"])
    assert {p: p.stat().st_mtime for p in sweep_dir.glob("runs/*/summary.json")} == before
    check_report(build_report(sweep_dir), sorted((sweep_dir / "runs").iterdir()))


@pytest.mark.parametrize("args,fragment", [
    (["sweep", "--grid", "lrr=0.1,0.2"], "unknown setting 'lrr'"),
    (["sweep", "--grid", "lr=0.1,-1"], "'lr' must be > 0"),
    (["report", "no/such/folder"], "is not a folder"),
])
def test_cli_errors_are_one_line(tmp_path, args, fragment):
    out = subprocess.run([FEDCOMP, *args], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 2
    assert fragment in out.stdout + out.stderr and "Traceback" not in out.stderr
