"""A diverged run under Flower's Simulation Engine (Ray): `fedcomp run` prints one line naming the round
and exits 2, never a finished run (issue 18); the loopback tests in test_divergence.py cover the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedcomp.records.results import DIVERGED

FEDCOMP = str(Path(sys.executable).parent / "fedcomp")


@pytest.mark.slow
def test_fedcomp_run_under_ray_exits_2_when_every_client_fails(tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = {"num_clients": 3, "rounds": 6, "seed": 1, "faults.client_failure_rate": 1.0,
                "server.max_failed_rounds": 2}
    args = [FEDCOMP, "run", "--preset", "fedavg", "--out", str(out)]
    args += [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "COLUMNS": "400"})
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "round 2" in errors[0] and "every sampled client failed" in errors[0], errors
    assert "Traceback" not in output
    assert json.loads((out / DIVERGED).read_text())["round"] == 2
    assert not (out / "summary.json").exists()
