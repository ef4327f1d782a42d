"""benchmarks/device_share.py runs on a machine with torch, torchvision, numpy and constriction alone.

The GPU machine the benchmark is meant for has no Flower, Ray or dataset loaders, so the
measured path must import none of them; a tiny run on the CPU also checks that the numpy
and torch paths give the same payload bytes.
"""

import os
import subprocess
import sys
from pathlib import Path

from fedcomp.compress.codec.deepcabac import available as deepcabac_available

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "device_share.py"
PRESETS = ["topk-ef", "stc", "nnc", "fsfl-bidir"]  # the benchmark's


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_benchmark_imports_no_flower_ray_or_dataset_loaders():
    code = ("import sys, benchmarks.device_share as b; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(b.FRAMEWORKS)))")
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_tiny_cpu_run_reports_identical_payloads_for_both_paths(tmp_path):
    out = tmp_path / "share.md"
    done = _python(str(SCRIPT), "--device", "cpu", "--models", "resnet20", "--reps", "2", "--samples", "8",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "imported by this run: none." in text and "No GPU was measured here" in text
    rows = [line for line in text.splitlines() if "| numpy |" in line or "| torch |" in line]
    # the nnc preset codes with DeepCABAC: without the deepcabac extra the benchmark measures the others and says so
    unmeasured = [] if deepcabac_available() else ["nnc"]
    assert len(rows) == 2 * (len(PRESETS) - len(unmeasured))  # 2 paths per measured preset
    assert all(row.endswith("| 2/2 |") for row in rows)
    for name in unmeasured:
        assert f"Preset `{name}` not measured: its codec is not installed here" in text
