"""Where a ClientApp process's time goes, for the deployment benchmark (`benchmarks/deploy_bench.py`).

With ``FEDCOMP_STAGE_LOG=FILE`` in its environment, a ClientApp appends one JSON line per
message to FILE: the wall-clock time its process was started (from ``/proc``; for a process
forked by the warm launcher, the fork), when its handler was entered, and when each stage of
the message ended. Without the
variable nothing is written. Under the Deployment Engine each message is a fresh process, so
the line shows what a message costs before its handler even runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STAGE_VARIABLE = "FEDCOMP_STAGE_LOG"


def process_started() -> float:
    """The wall-clock time (s since the epoch) this process was started; 0.0 where ``/proc`` cannot say."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return 0.0
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def record_stages(kind: str, stages: dict[str, float]) -> None:
    """Append ``stages`` (stage name -> wall-clock time it ended) of one ``kind`` of message to the stage log."""
    target = os.environ.get(STAGE_VARIABLE)
    if not target:
        return
    line = {"kind": kind, "pid": os.getpid(), "process_started": process_started(), **stages,
            "written": time.time()}
    with open(target, "a") as file:
        file.write(json.dumps(line) + "\n")
