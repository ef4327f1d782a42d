"""The HTML report: self-contained, its numbers equal to summary.json's, every section present."""

import base64
import json
from html.parser import HTMLParser

import pytest

from fedcomp.analysis.compare import compare_runs
from fedcomp.errors import FedcompError
from fedcomp.analysis.report import build_report
from fedcomp.analysis.sweep import SweepPlan, run_sweep
from runfiles import write_run


class Cells(HTMLParser):
    """Table rows by table id: each row a list of (text, data-value or None); and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.tables, self.links, self.scripts = {}, [], 0
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        self.scripts += tag == "script"
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", f"t{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ["", attrs.get("data-value")]
            self._row.append(self._cell)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


def parse(path):
    cells = Cells()
    cells.feed(path.read_text())
    return cells


def check_report(path, run_dirs):
    """The report at ``path`` shows each run's summary.json figures exactly, and nothing from outside."""
    cells = parse(path)
    assert cells.scripts == 0
    assert cells.links and all(link.startswith("data:image/png;base64,") for link in cells.links)
    for link in cells.links:
        assert base64.b64decode(link.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    header = [text for text, _ in cells.tables["runs"][0]]
    rows = {row[0][0]: row for row in cells.tables["runs"][1:]}
    assert set(rows) == {d.name for d in run_dirs}
    keys = {"final accuracy": "final_accuracy", "best accuracy": "best_accuracy", "rounds": "rounds",
            "bytes up": "bytes_up", "bytes down": "bytes_down", "bytes total": "bytes_total",
            "ratio vs FedAvg": "compression_ratio", "wall s": "wall_seconds"}
    for d in run_dirs:
        summary = json.loads((d / "summary.json").read_text())
        for column, key in keys.items():
            text, value = rows[d.name][header.index(column)]
            assert value is not None and type(summary[key])(value) == summary[key], (d.name, key)
        assert rows[d.name][header.index("bytes total")][0] == f"{summary['bytes_total']:,}"
    return cells


@pytest.fixture
def sweep_dir(tmp_path):
    accuracies = {0.01: [0.5, 0.7], 0.05: [0.6, 0.9]}

    def engine(run, run_dir, _):
        lr, seed = float(run.config["lr"]), int(run.config["seed"])
        model_bytes = 500 if run.config["model"] == "mlp" else 2000
        return write_run(run_dir, {k: v for k, v in run.config.items() if k not in ("num_clients", "rounds")},
                         [a + seed * 0.03 for a in accuracies[lr]], model_bytes, model_bytes,
                         clients=int(run.config["num_clients"]))

    plan = SweepPlan("quick", {"rounds": 2}, {"preset": ["quick", "fedavg-mlp"], "lr": [0.01, 0.05], "seed": [0, 1]})
    run_sweep(plan, tmp_path, jobs=2, run_fn=engine)
    return tmp_path


def test_sweep_report_numbers_equal_the_summaries(sweep_dir):
    path = build_report(sweep_dir)
    run_dirs = sorted((sweep_dir / "runs").iterdir())
    cells = check_report(path, run_dirs)
    text = path.read_text()
    for section in ("Config diff", "Curves per round", "frontier", "Least bytes", "Ablation tables",
                    "Bytes per client"):
        assert section in text
    diff_header = [t for t, _ in cells.tables["config-diff"][0]]
    assert diff_header == ["run", "lr", "model", "num_clients", "output.preset", "seed"]
    # target: 1 pp below the best mean point (0.915 at lr=0.05) -> 0.905; only seed 1 (0.93) reaches it
    target = {row[0][0]: row for row in cells.tables["target"][1:]}
    assert set(target) == {"quick", "fedavg-mlp"} and target["quick"][1][0] == "1 of 2"
    assert float(target["quick"][2][1]) == pytest.approx(json.loads(
        (sweep_dir / "runs" / "preset-quick_lr-0.05_seed-1" / "summary.json").read_text())["bytes_total"] / 1e6)
    # per-client bytes: each client's total over the rounds, as the meter recorded it
    assert '<td data-value="4006">4,006</td><td data-value="4000">4,000</td>' in text  # client 3: 2 x 2003 up


def test_single_run_report(tmp_path):
    write_run(tmp_path / "one", {}, [0.4, 0.8, 0.85], 300, 900)
    path = build_report(tmp_path / "one", tmp_path / "out" / "r.html")
    check_report(path, [tmp_path / "one"])
    assert "no differences" in path.read_text()


def test_compare_reads_sweeps(sweep_dir, tmp_path):
    table = compare_runs([sweep_dir], tmp_path / "cmp.md")
    assert table.count("| preset-") == 8


def test_report_of_a_folder_without_runs(tmp_path):
    with pytest.raises(FedcompError, match="neither a run folder"):
        build_report(tmp_path)
    with pytest.raises(FedcompError, match="metric"):
        build_report(tmp_path, metric="accuracy")
