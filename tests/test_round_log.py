"""The command's progress output when stdout is a file or a pipe (logs, CI): one line per round."""

import io

from fedcomp import cli
from fedcomp.records.results import MB
from fedcomp.run.config import resolve


def test_each_round_is_one_line_when_stdout_is_not_a_terminal(monkeypatch, tmp_path):
    out = io.StringIO()  # not a terminal: rich would wrap at 80 columns
    monkeypatch.setattr(cli.console, "file", out)
    rounds = 3
    rows = [{"round": r, "accuracy": 0.9123, "loss": 0.3456, "bytes_up": 12_345_678, "bytes_down": 23_456_789,
             "cum_bytes_total": r * 35_802_467, "f4_accuracy": 0.8765} for r in range(1, rounds + 1)]

    def engine(config, run_dir, on_round):
        for row in rows:
            on_round(row)
        return {"final_accuracy": 0.9123, "best_accuracy": 0.9123, "bytes_total": rows[-1]["cum_bytes_total"],
                "compression_ratio": 1.0, "fedavg_bytes_total": rows[-1]["cum_bytes_total"],
                "wall_seconds": 1.5}

    run_dir = tmp_path / ("a-long-run-folder-name-" * 3)
    config = resolve({"num_clients": 2, "rounds": rounds})
    cli.execute(config, run_dir, engine)
    lines = [line for line in out.getvalue().splitlines() if line]  # the closed progress bar leaves a blank line
    round_lines = [line for line in lines if line.startswith("round ")]
    assert len(round_lines) == rounds
    for row, line in zip(rows, round_lines):
        assert len(line) > 80  # longer than rich's default width off a terminal
        assert f"total so far {row['cum_bytes_total'] / MB:.3f} MB" in line and "f4 acc 0.8765" in line
    assert len([line for line in lines if line.startswith("final accuracy")]) == 1
    assert lines[-2].endswith(f"Results in {run_dir}")
    assert lines[-1] == cli.savings_line(engine(config, run_dir, lambda row: None), str(config["output.preset"]))
    assert len(lines) == 3 + rounds  # the header, the rounds, the final line and the savings line
