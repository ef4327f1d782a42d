"""Sweep planning, scheduling and resuming (the engine is a function here; the real one is in the slow test)."""

import json
import threading
import time

import pytest

from fedcomp.errors import ConfigError, FedcompError
from fedcomp.records.divergence import chance_warning
from fedcomp.analysis.sweep import (SweepPlan, expand, expand_run_dirs, load_index, load_sweep_file, merge_plans,
                                    parse_grid, run_name, run_sweep)
from runfiles import write_run


def test_grid_assignments_and_bad_ones():
    assert parse_grid("lr=0.01, 0.05,0.1") == ("lr", ["0.01", "0.05", "0.1"])
    for bad in ("lr", "lr=", "=1,2"):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def test_expand_crosses_list_and_grid_and_validates_every_run():
    plan = SweepPlan("quick", {"rounds": "2"}, {"lr": ["0.01", "0.05"], "seed": [0, 1, 2]},
                     [{"preset": "default"}, {"preset": "fedavg-mlp", "batch_size": 16}])
    runs = expand(plan)
    assert len(runs) == 2 * 2 * 3 and len({r.name for r in runs}) == 12
    mlp = [r for r in runs if r.overrides["preset"] == "fedavg-mlp"]
    assert all(r.config["model"] == "mlp" and r.config["batch_size"] == 16 and r.config["rounds"] == 2 for r in mlp)
    assert {r.config["output.preset"] for r in runs} == {"default", "fedavg-mlp"}
    assert runs[0].name == "preset-default_lr-0.01_seed-0"
    with pytest.raises(ConfigError, match="unknown setting 'lrr'"):
        expand(SweepPlan(grid={"lrr": [1]}))
    with pytest.raises(ConfigError, match="'lr' must be > 0"):
        expand(SweepPlan(grid={"lr": ["0.1", "-1"]}))
    with pytest.raises(ConfigError, match="unknown preset"):
        expand(SweepPlan(grid={"preset": ["nope"]}))


def test_long_names_stay_unique_and_short():
    a, b = run_name({"data.dir": "x" * 200}), run_name({"data.dir": "x" * 199 + "y"})
    assert a != b and len(a) <= 100 and len(b) <= 100
    assert run_name({"data.dir": "a/b c"}) == "data.dir-a-b-c"


def test_sweep_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('preset = "quick"\n[set]\nrounds = 2\n[grid]\nlr = [0.01, 0.02]\n[grid.train]\nmomentum = [0.0]\n'
                    '[[runs]]\nseed = 1\n[[runs]]\nseed = 2\n')
    plan = load_sweep_file(path)
    assert plan == SweepPlan("quick", {"rounds": 2}, {"lr": [0.01, 0.02], "train.momentum": [0.0]},
                             [{"seed": 1}, {"seed": 2}])
    merged = merge_plans(plan, {"rounds": 3}, {"lr": [0.5]})
    assert merged.base == {"rounds": 3} and merged.grid["lr"] == [0.5] and len(expand(merged)) == 2
    for text, fragment in [("[grid]\nlr = 0.1\n", "non-empty list"), ("colour = 1\n", "unknown top-level"),
                           ("[grid\n", "not valid TOML")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=fragment):
            load_sweep_file(path)
    with pytest.raises(ConfigError, match="not found"):
        load_sweep_file(tmp_path / "missing.toml")


class Engine:
    """Writes each run's files with fedcomp's RunRecorder, slowly, counting how many run at once."""

    def __init__(self, fail: str = "") -> None:
        self.calls, self.running, self.most, self.fail = [], 0, 0, fail
        self.lock = threading.Lock()

    def __call__(self, run, run_dir, ray_cpus):
        with self.lock:
            self.calls.append((run.name, ray_cpus))
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)
        with self.lock:
            self.running -= 1
        if run.name == self.fail:
            raise RuntimeError("the simulation ended without a summary")
        settings = {k: v for k, v in run.config.items() if k not in ("num_clients", "rounds", "output.dir")}
        with self.lock:  # matplotlib (the recorder's plot) is not thread-safe; real runs plot in their own process
            return write_run(run_dir, settings, [0.5, 0.6 + float(run.config["lr"])], 1000, 2000,
                             clients=int(run.config["num_clients"]))


PLAN = SweepPlan("quick", {"rounds": 2}, {"lr": [0.01, 0.02, 0.03], "seed": [0, 1]})


def test_runs_go_in_parallel_up_to_jobs_and_the_index_lists_them(tmp_path):
    engine = Engine()
    done = []
    index = run_sweep(PLAN, tmp_path, jobs=3, cpus=6, run_fn=engine, on_done=done.append)
    assert engine.most == 3 and {c for _, c in engine.calls} == {2}  # 3 at a time, 6 CPUs // 3 each
    assert len(done) == 6 and all(e["status"] == "done" for e in index["runs"])
    on_disk = load_index(tmp_path)
    assert on_disk["runs"] == index["runs"] and on_disk["jobs"] == 3
    for entry in on_disk["runs"]:
        summary = json.loads((tmp_path / entry["dir"] / "summary.json").read_text())
        assert entry["final_accuracy"] == summary["final_accuracy"] and entry["bytes_total"] == summary["bytes_total"]
    assert len(expand_run_dirs([tmp_path])) == 6


def test_a_finished_run_is_not_redone_and_a_failed_one_is(tmp_path):
    first = Engine(fail="lr-0.02_seed-1")
    index = run_sweep(PLAN, tmp_path, jobs=2, run_fn=first)
    failed = [e for e in index["runs"] if e["status"] == "failed"]
    assert [e["name"] for e in failed] == ["lr-0.02_seed-1"], failed
    assert "without a summary" in failed[0]["error"]
    assert len(first.calls) == 6
    again = Engine()
    index = run_sweep(merge_plans(PLAN, {}, {"seed": [0, 1, 2]}), tmp_path, jobs=2, run_fn=again)
    assert sorted(n for n, _ in again.calls) == sorted(["lr-0.02_seed-1", "lr-0.01_seed-2", "lr-0.02_seed-2",
                                                         "lr-0.03_seed-2"])
    assert all(e["status"] == "done" for e in index["runs"]) and len(index["runs"]) == 9


def test_a_run_that_finished_at_chance_says_so_in_the_index(tmp_path):
    def engine(run, run_dir, ray_cpus):
        chance = run.config["lr"] == 0.03
        warning = chance_warning(0.1, 10) if chance else None
        return write_run(run_dir, {}, [0.1, 0.1] if chance else [0.5, 0.7], 1000, 2000, warning=warning)

    index = run_sweep(PLAN, tmp_path, jobs=1, run_fn=engine)
    warned = sorted(e["name"] for e in index["runs"] if "chance level" in e.get("warning", ""))
    assert warned == ["lr-0.03_seed-0", "lr-0.03_seed-1"]
    assert load_index(tmp_path)["runs"] == index["runs"]


def test_a_folder_holding_another_run_is_an_error(tmp_path):
    run_sweep(PLAN, tmp_path, jobs=2, run_fn=Engine())
    with pytest.raises(FedcompError, match="other settings .*rounds"):
        run_sweep(merge_plans(PLAN, {"rounds": 3}, {}), tmp_path, jobs=2, run_fn=Engine())


def test_not_a_sweep(tmp_path):
    with pytest.raises(FedcompError, match="not a sweep folder"):
        load_index(tmp_path)
    with pytest.raises(ConfigError, match="jobs"):
        run_sweep(PLAN, tmp_path, jobs=0, run_fn=Engine())
