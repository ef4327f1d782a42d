"""Write tests/golden/preset_runs.json: a short run of every preset, the reference for refactors.

Each entry holds the preset's settings as they were when recorded (so retuning a preset later does
not invalidate the reference) and, per round, the accuracy and the payload bytes up and down. The
runs go through the real ServerApp code and ClientApp over the loopback grid (no Ray).

    python tests/golden/make_preset_runs.py            # rewrite the file
    python tests/golden/make_preset_runs.py NAME...    # rewrite only these presets' entries
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

SHORT = {"rounds": 3, "seed": 0, "output.checkpoint": False}
# data not on every fresh machine (CIFAR-10 copy, a Debian package)
NEEDS_FILES = {"cifar10-resnet20", "fmnist", "transfer-fmnist-classes"}


def short_run(settings: dict) -> list[dict]:
    """Per-round accuracy and payload bytes of a short loopback run of ``settings``."""
    from clients.client_app import app
    from fedcomp.run.config import resolve
    from strategies.loopback import run_loopback

    with tempfile.TemporaryDirectory() as tmp:
        config = resolve(settings, SHORT, {"output.dir": tmp})
        run_dir = run_loopback(config, app)
        rows = [json.loads(line) for line in (Path(run_dir) / "rounds.jsonl").read_text().splitlines()]
    return [{"round": r["round"], "accuracy": r["accuracy"],
             "bytes_up": r.get("bytes_up"), "bytes_down": r.get("bytes_down")} for r in rows]


def main() -> None:
    from fedcomp.run.presets import PRESETS, preset

    path = HERE / "preset_runs.json"
    only = sys.argv[1:]
    runs = json.loads(path.read_text()) if only else {}
    for name in only or PRESETS:
        if name in NEEDS_FILES:
            continue
        settings = preset(name)
        runs[name] = {"settings": settings, "rows": short_run(settings)}
        print(name, runs[name]["rows"][-1], flush=True)
    path.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
