"""Side-by-side comparison of finished runs: a markdown table and one accuracy-vs-MB plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from fedcomp.errors import FedcompError
from fedcomp.records.plots import plot_accuracy_vs_mb
from fedcomp.records.results import MB, accuracy_curve, read_rounds

COLUMNS = [("run", "{}"), ("preset", "{}"), ("rounds", "{}"), ("final acc", "{:.4f}"), ("best acc", "{:.4f}"),
           ("up MB", "{:.3f}"), ("down MB", "{:.3f}"), ("total MB", "{:.3f}"), ("ratio vs FedAvg", "{:.2f}x"),
           ("wall s", "{:.1f}")]


def load_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise FedcompError(f"{run_dir} is not a finished run (no summary.json)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FedcompError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(summary, dict) or "bytes_total" not in summary:
        raise FedcompError(f"{path} has no transfer figures (a run whose strategy meters nothing cannot be compared)")
    return summary


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> str:
    """Markdown table of the runs' summaries; also writes ``<out stem>.png`` with all curves.

    A sweep folder (with ``sweep.json``) stands for all its finished runs.
    """
    from fedcomp.analysis.sweep import expand_run_dirs

    dirs = expand_run_dirs(run_dirs)
    if not dirs:
        raise FedcompError("compare needs at least one run folder")
    labels, rows, curves = [], [], {}
    for d in dirs:
        s = load_summary(d)
        label = d.name if d.name not in labels else str(d)
        labels.append(label)
        values = [label, s.get("preset"), s["rounds"], s["final_accuracy"], s["best_accuracy"],
                  s["bytes_up"] / MB, s["bytes_down"] / MB, s["bytes_total"] / MB, s["compression_ratio"],
                  s["wall_seconds"]]
        rows.append([fmt.format(v) if v is not None else "-" for (_, fmt), v in zip(COLUMNS, values)])
        curves[label] = accuracy_curve(read_rounds(d), s.get("initial_accuracy"))
    header = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    table = "\n".join([header, rule, *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"
    out_path = Path(out) if out else Path("comparison.md")
    plot = plot_accuracy_vs_mb(curves, out_path.with_suffix(".png"))
    text = f"{table}\n![accuracy vs transmitted data]({plot.name})\n"
    if out:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text)
    return text
