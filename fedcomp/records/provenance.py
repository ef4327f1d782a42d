"""Where a measurement came from: the results files under ``benchmarks/results/`` name the commit."""

from __future__ import annotations

import subprocess
from pathlib import Path


def source_commit() -> str:
    """The short hash of the checkout fedcomp runs from ('unknown' outside a git checkout or without git)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent)
    except OSError:
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"
