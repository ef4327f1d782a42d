"""``fedcomp report``: one self-contained HTML page for a run or a sweep.

The page has no scripts and no outside references: plots are PNGs embedded as data URIs,
styles are inline, so it opens offline and can be mailed as one file. It shows the runs'
headline figures (straight from each ``summary.json``), the config diff between runs,
accuracy per round and against transmitted data, the per-scheme accuracy-vs-bytes frontier
with its seed spread, the least bytes reaching a target accuracy, per-client bytes, and one
ablation table per scheme. Each number cell carries the exact value in ``data-value``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedcomp.analysis.compare import load_summary  # noqa: E402
from fedcomp.errors import FedcompError  # noqa: E402
from fedcomp.analysis.frontier import (  # noqa: E402
    Point, aggregate, bytes_to_target, pareto, run_points, split_keys, target_accuracy, varied_keys)
from fedcomp.records.results import MB, read_rounds  # noqa: E402
from fedcomp.analysis.sweep import INDEX, expand_run_dirs  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
STYLE = """body{font-family:sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#eee}
td.t,th.t{text-align:left}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
h2{border-bottom:2px solid #444;padding-top:.5em}.note{color:#555;font-size:13px}"""


@dataclass(frozen=True)
class LoadedRun:
    """A finished run's files."""

    name: str
    config: dict[str, Any]
    summary: dict[str, Any]
    rounds: list[dict[str, Any]]


def load_runs(path: str | Path) -> list[LoadedRun]:
    """The finished runs of a run folder or a sweep folder."""
    path = Path(path)
    if not path.is_dir():
        raise FedcompError(f"{path} is not a folder")
    if not (path / INDEX).is_file() and not (path / "summary.json").is_file():
        raise FedcompError(f"{path} is neither a run folder (summary.json) nor a sweep folder ({INDEX})")
    runs = []
    for run_dir in expand_run_dirs([path]):
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise FedcompError(f"{run_dir} has no config.json")
        runs.append(LoadedRun(run_dir.name, json.loads(config_path.read_text()), load_summary(run_dir),
                              read_rounds(run_dir)))
    return runs


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _cell(value: Any, fmt: str = "{}") -> str:
    """A table cell; numbers carry their exact value in ``data-value``."""
    if value is None:
        return "<td>-</td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td data-value="{value!r}">{html.escape(fmt.format(value))}</td>'
    return f'<td class="t">{html.escape(str(value))}</td>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "") -> str:
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f'<th class="t">{html.escape(h)}</th>' if i == 0 else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(header))
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


RUN_COLUMNS = [("final accuracy", "final_accuracy", "{:.4f}"), ("best accuracy", "best_accuracy", "{:.4f}"),
               ("rounds", "rounds", "{}"), ("bytes up", "bytes_up", "{:,}"), ("bytes down", "bytes_down", "{:,}"),
               ("bytes total", "bytes_total", "{:,}"), ("ratio vs FedAvg", "compression_ratio", "{:.2f}x"),
               ("wall s", "wall_seconds", "{:.1f}")]


def runs_table(runs: Sequence[LoadedRun]) -> str:
    """Headline figures of every run, from its summary.json."""
    rows = [[_cell(r.name), *(_cell(r.summary.get(key), fmt) for _, key, fmt in RUN_COLUMNS)] for r in runs]
    return _table(["run", *(name for name, _, _ in RUN_COLUMNS)], rows, "runs")


def config_diff(runs: Sequence[LoadedRun]) -> str:
    """The settings that differ between runs (one column each), and the shared ones folded away."""
    configs = [r.config for r in runs]
    varied = varied_keys(configs)
    shared = {k: v for k, v in configs[0].items() if k not in varied and k != "output.dir"}
    parts = []
    if varied and len(runs) > 1:
        parts.append(_table(["run", *varied], [[_cell(r.name), *(_cell(r.config.get(k)) for k in varied)]
                                               for r in runs], "config-diff"))
    else:
        parts.append('<p class="note">One run, or runs with identical settings: no differences.</p>')
    parts.append("<details><summary>settings shared by every run</summary>"
                 + _table(["setting", "value"], [[_cell(k), _cell(v)] for k, v in sorted(shared.items())])
                 + "</details>")
    return "".join(parts)


def _groups(runs: Sequence[LoadedRun], scheme_keys: Sequence[str] | None) -> dict[str, list[LoadedRun]]:
    """Runs by point label (scheme and knob, seeds together)."""
    points = run_points([(r.name, r.config, r.summary) for r in runs], scheme_keys=scheme_keys)
    groups: dict[str, list[LoadedRun]] = {}
    for run, p in zip(runs, points):
        label = p.scheme + ("" if not p.knob else " | " + ", ".join(f"{k}={v}" for k, v in p.knob))
        groups.setdefault(label, []).append(run)
    return groups


def _mean_band(series: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    length = min(len(s) for s in series)
    cols = [[s[i] for s in series] for i in range(length)]
    return [sum(c) / len(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def curves_plot(runs: Sequence[LoadedRun], scheme_keys: Sequence[str] | None) -> str:
    """Accuracy per round and against cumulative MB: one line per point (mean over seeds, min-max band)."""
    fig, (by_round, by_mb) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=100)
    for i, (label, members) in enumerate(_groups(runs, scheme_keys).items()):
        color = COLORS[i % len(COLORS)]
        rounds, low, high = _mean_band([[row["accuracy"] for row in r.rounds] for r in members])
        mb, _, _ = _mean_band([[row.get("cum_bytes_total", 0) / MB for row in r.rounds] for r in members])
        x = list(range(1, len(rounds) + 1))
        by_round.plot(x, rounds, color=color, label=f"{label} (n={len(members)})")
        by_round.fill_between(x, low, high, color=color, alpha=0.15)
        by_mb.plot(mb, rounds, color=color, marker="o", markersize=2)
        by_mb.fill_between(mb, low, high, color=color, alpha=0.15)
    by_round.set(xlabel="round", ylabel="test accuracy", title="Accuracy per round (mean, min-max over seeds)")
    by_mb.set(xlabel="cumulative transmitted MB (up + down payload)", ylabel="test accuracy",
              title="Accuracy vs transmitted data")
    by_mb.set_xscale("log")
    for ax in (by_round, by_mb):
        ax.grid(True, alpha=0.3)
    by_round.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def frontier_plot(points: Sequence[Point], fronts: Mapping[str, list[Point]], runs_xy: Mapping[str, tuple],
                  target: float | None, metric: str) -> str:
    """Every run (dots), each point's mean with its min-max bar, and each scheme's frontier with its band."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for i, scheme in enumerate(sorted(fronts)):
        color = COLORS[i % len(COLORS)]
        xs, ys = runs_xy[scheme]
        ax.scatter([x / MB for x in xs], ys, color=color, s=10, alpha=0.35)
        mine = [p for p in points if p.scheme == scheme]
        ax.errorbar([p.bytes_mean / MB for p in mine], [p.acc_mean for p in mine],
                    yerr=[[p.acc_mean - p.acc_min for p in mine], [p.acc_max - p.acc_mean for p in mine]],
                    fmt="o", color=color, markersize=4, capsize=3)
        front = fronts[scheme]
        fx = [p.bytes_mean / MB for p in front]
        ax.plot(fx, [p.acc_mean for p in front], color=color, linewidth=2, label=f"{scheme} frontier")
        ax.fill_between(fx, [p.acc_min for p in front], [p.acc_max for p in front], color=color, alpha=0.18)
    if target is not None:
        ax.axhline(target, color="#444", linestyle="--", linewidth=1, label=f"target {target:.4f}")
    ax.set_xscale("log")
    ax.set(xlabel="total transmitted MB (up + down payload)", ylabel=metric.replace("_", " "),
           title="Accuracy vs bytes: frontier per scheme (mean over seeds, min-max band)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def client_totals(run: LoadedRun) -> dict[int, dict[str, int]]:
    """Per client partition: bytes up and down summed over the run's rounds."""
    totals: dict[int, dict[str, int]] = {}
    for row in run.rounds:
        for c in row.get("clients", []):
            t = totals.setdefault(int(c["partition_id"] if c.get("partition_id") is not None else c["client"]),
                                  {"bytes_up": 0, "bytes_down": 0})
            t["bytes_up"] += int(c["bytes_up"])
            t["bytes_down"] += int(c["bytes_down"])
    return dict(sorted(totals.items()))


def per_client_section(runs: Sequence[LoadedRun], scheme_keys: Sequence[str] | None) -> str:
    """A bar chart of mean bytes per client for each point, and each run's exact table folded away."""
    groups = _groups(runs, scheme_keys)
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    width = 0.8 / max(1, len(groups))
    for i, (label, members) in enumerate(groups.items()):
        sums: dict[int, list[int]] = {}
        for run in members:
            for client, t in client_totals(run).items():
                sums.setdefault(client, []).append(t["bytes_up"] + t["bytes_down"])
        clients = sorted(sums)
        ax.bar([c + i * width for c in clients], [sum(sums[c]) / len(sums[c]) / MB for c in clients], width,
               color=COLORS[i % len(COLORS)], label=label)
    ticks = sorted({c for run in runs for c in client_totals(run)})
    ax.set_xticks([c + width * (len(groups) - 1) / 2 for c in ticks], [str(c) for c in ticks])
    ax.set(xlabel="client (partition id)", ylabel="MB up + down over the run",
           title="Transmitted data per client (mean over seeds)")
    ax.legend(fontsize=6)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    parts = [_img(_png(fig), "bytes per client")]
    for run in runs:
        rows = [[_cell(c), _cell(t["bytes_up"], "{:,}"), _cell(t["bytes_down"], "{:,}"),
                 _cell(t["bytes_up"] + t["bytes_down"], "{:,}")] for c, t in client_totals(run).items()]
        parts.append(f"<details><summary>{html.escape(run.name)}</summary>"
                     + _table(["client", "bytes up", "bytes down", "bytes total"], rows) + "</details>")
    return "".join(parts)


def ablation_tables(points: Sequence[Point], fronts: Mapping[str, list[Point]],
                    fedavg_bytes: Mapping[tuple[str, tuple], float]) -> str:
    """Per scheme: each knob setting's accuracy over seeds, bytes, ratio, and whether it is on the frontier."""
    parts = []
    for scheme in sorted(fronts):
        rows = []
        for p in (p for p in points if p.scheme == scheme):
            dense = fedavg_bytes.get((p.scheme, p.knob))
            rows.append([_cell(p.knob_label), _cell(p.seeds), _cell(p.acc_mean, "{:.4f}"), _cell(p.acc_std, "{:.4f}"),
                         _cell(p.acc_min, "{:.4f}"), _cell(p.acc_max, "{:.4f}"), _cell(p.bytes_mean / MB, "{:.4f}"),
                         _cell(dense / p.bytes_mean if dense and p.bytes_mean else None, "{:.1f}x"),
                         _cell("yes" if p in fronts[scheme] else "")])
        parts.append(f"<h3>{html.escape(scheme)}</h3>" + _table(
            ["knob", "seeds", "acc mean", "acc std", "acc min", "acc max", "MB mean", "ratio vs FedAvg",
             "on frontier"], rows))
    return "".join(parts)


def target_table(runs: Sequence[LoadedRun], points: Sequence[Point], scheme_keys: Sequence[str] | None,
                 metric: str, target: float) -> str:
    """Least bytes reaching ``target`` per scheme: mean, std and range over seeds, and on the mean points."""
    rp = run_points([(r.name, r.config, r.summary) for r in runs], metric, scheme_keys)
    rows = []
    for t in bytes_to_target(rp, points, target):
        rows.append([_cell(t.scheme), _cell(f"{t.reached} of {t.seeds}"),
                     _cell(t.mean / MB if t.mean is not None else None, "{:.4f}"),
                     _cell(t.std / MB if t.std is not None else None, "{:.4f}"),
                     _cell(min(t.per_seed) / MB if t.per_seed else None, "{:.4f}"),
                     _cell(max(t.per_seed) / MB if t.per_seed else None, "{:.4f}"),
                     _cell(t.of_means / MB if t.of_means is not None else None, "{:.4f}")])
    return _table(["scheme", "seeds reaching", "MB mean", "MB std", "MB min", "MB max", "MB of mean points"],
                  rows, "target")


def build_report(path: str | Path, out: str | Path | None = None, metric: str = "final_accuracy",
                 scheme_keys: Sequence[str] | None = None, baseline: str | None = None,
                 within: float = 0.01) -> Path:
    """Write the report of the run or sweep folder ``path`` (default ``<path>/report.html``); return its path."""
    if metric not in ("final_accuracy", "best_accuracy"):
        raise FedcompError(f"metric must be final_accuracy or best_accuracy; got {metric!r}")
    path = Path(path)
    runs = load_runs(path)
    out = Path(out) if out else path / "report.html"
    kind = "sweep" if (path / INDEX).is_file() else "run"
    body = [f"<h1>fedcomp {kind} report: {html.escape(path.resolve().name)}</h1>",
            f'<p class="note">{len(runs)} finished run(s); written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. '
            "Every figure comes from the runs' summary.json and rounds.jsonl.</p>",
            "<h2>Runs</h2>", runs_table(runs), "<h2>Config diff</h2>", config_diff(runs),
            "<h2>Curves per round</h2>", _img(curves_plot(runs, scheme_keys), "accuracy curves")]
    schemes, knobs = split_keys([r.config for r in runs], scheme_keys)
    rp = run_points([(r.name, r.config, r.summary) for r in runs], metric, scheme_keys)
    points = aggregate(rp)
    fronts = pareto(points)
    target, target_text = target_accuracy(points, baseline, within)
    runs_xy = {s: ([r.bytes_total for r in rp if r.scheme == s], [r.accuracy for r in rp if r.scheme == s])
               for s in fronts}
    fedavg = {}
    for r, p in zip(runs, rp):
        fedavg.setdefault((p.scheme, p.knob), r.summary.get("fedavg_bytes_total"))
    body += ["<h2>Accuracy-vs-bytes frontier</h2>",
             f'<p class="note">Metric: {metric.replace("_", " ")}. Scheme = '
             f'{html.escape(", ".join(schemes) or "(one scheme)")}; knob = {html.escape(", ".join(knobs) or "-")}; '
             "runs differing only in seed are pooled.</p>",
             _img(frontier_plot(points, fronts, runs_xy, target, metric), "frontier"),
             f"<h2>Least bytes to reach the target accuracy</h2><p class=\"note\">Target {target:.4f}: "
             f"{html.escape(target_text)}.</p>", target_table(runs, points, scheme_keys, metric, target),
             "<h2>Ablation tables</h2>", ablation_tables(points, fronts, fedavg),
             "<h2>Bytes per client</h2>", per_client_section(runs, scheme_keys)]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>fedcomp report</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
