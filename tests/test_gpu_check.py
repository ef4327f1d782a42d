"""benchmarks/gpu_check.sh runs where only torch, torchvision, numpy, pillow and constriction are installed.

The GPU machine has no Flower, Ray or dataset libraries. Here they are installed, so the check
makes them unimportable (``sys.modules[name] = None``: ``import`` raises ModuleNotFoundError and
``importlib.util.find_spec`` answers None, as for a package that is not installed) and runs the script's measured
path, ``benchmarks/device_share.py``, on the CPU: a lazy import that still reaches one of them
fails this test, where a machine without them would fail the GPU check.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABSENT = ("flwr", "ray", "flwr_datasets", "datasets", "sklearn", "matplotlib", "pandas", "zennit")

RUN_WITHOUT = f"""
import runpy, sys
sys.modules.update(dict.fromkeys({ABSENT!r}))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_gpu_check_runs_without_flower_ray_or_dataset_libraries(tmp_path):
    out = tmp_path / "device_share_cpu.md"
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, "benchmarks/device_share.py", "--device", "cpu", "--models", "resnet20",
         "--reps", "1", "--samples", "8", "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()  # (its "imported by this run" line counts the refused names, present as None)
    assert "| numpy |" in text and "| torch |" in text, text

