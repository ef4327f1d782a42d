"""Failing, corrupting and oversized clients never end a run (loopback grid, real ClientApp, no Ray)."""

import json
import logging

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from clients.client_app import app as client_app
from fedcomp.run.config import resolve
from fedcomp.exchange.faults import FaultPlan
from fedcomp.errors import ReplyError
from fedcomp.exchange.updates import bound_update
from strategies.loopback import LoopbackGrid
from strategies.server_app import build_strategy, serve


def run_in_process(settings: dict, run_dir, caplog) -> tuple[dict, list[dict], LoopbackGrid, str]:
    config = resolve({**settings, "output.dir": str(run_dir)})
    grid = LoopbackGrid(client_app, {700 + 3 * i: i for i in range(int(config["num_clients"]))}, config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    with caplog.at_level(logging.WARNING):
        serve(grid, context, build_strategy)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return summary, rows, grid, caplog.text


def test_fault_draws_repeat_and_follow_their_rates():
    plan = FaultPlan(failure_rate=0.3, corrupt_rate=0.1, seed=4)
    draws = [plan.draw(r, p) for r in range(1, 41) for p in range(25)]
    assert draws == [plan.draw(r, p) for r in range(1, 41) for p in range(25)]
    assert 0.25 < np.mean([d["fail"] for d in draws]) < 0.35
    assert 0.06 < np.mean([d["corrupt"] for d in draws]) < 0.14
    assert not any(d["slow"] for d in draws)


def test_thirty_percent_failing_clients_every_round_still_converge_and_meter_exactly(task_identity, tmp_path,
                                                                                     caplog):
    settings = {"up.scheme": "topk-uniform-ans", "up.fraction": 0.02, "down.scheme": "topk-uniform-ans",
                "down.fraction": 0.03, "faults.client_failure_rate": 0.3, "faults.corrupt_payload_rate": 0.05}
    summary, rows, grid, log = run_in_process(settings, tmp_path, caplog)
    plan = FaultPlan(0.3, 0.05, seed=0)
    expected_failures = sum(plan.draw(r, p)["fail"] for r in range(1, 21) for p in range(10))
    expected_corrupt = sum(plan.draw(r, p)["corrupt"] and not plan.draw(r, p)["fail"]
                           for r in range(1, 21) for p in range(10))
    assert expected_failures >= 40 and expected_corrupt >= 1  # the test really injects faults
    assert log.count("injected failure") == expected_failures  # each logged once, with its node
    assert log.count("CRC") == expected_corrupt
    assert summary["rounds"] == 20 and summary["final_accuracy"] > 0.9
    assert "holds model version" not in log and "does not match" not in log  # failed clients were resynced
    # metered exactly: every message that arrived (error replies included), to the byte the loopback carried
    assert summary["message_bytes_up"] == sum(grid.bytes_up.values())
    assert summary["message_bytes_down"] == sum(grid.bytes_down.values())
    assert summary["bytes_total"] == sum(r["bytes_up"] + r["bytes_down"] for r in rows)


@pytest.mark.parametrize("action", ["clip", "refuse"])
def test_an_update_above_the_norm_bound_is_clipped_or_refused(action):
    update = {"a": np.full(4, 3.0, np.float32), "b": np.full(9, 4.0 / 3, np.float32)}  # norm sqrt(36 + 16) ~ 7.2
    assert bound_update(update, 0.0, action)["a"][0] == 3.0
    assert bound_update(update, 10.0, action)["a"][0] == 3.0
    if action == "refuse":
        with pytest.raises(ReplyError, match="exceeds server.max_update_norm"):  # the client's failure, not a bug
            bound_update(update, 1.0, action)
    else:
        clipped = bound_update(update, 1.0, action)
        norm = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in clipped.values()))
        assert norm == pytest.approx(1.0, rel=1e-6)


def test_a_client_past_the_round_timeout_fails_once_and_min_results_holds_the_model(task_identity, tmp_path,
                                                                                    caplog):
    """Slow clients (faults.slow_client_rate) against a short server.round_timeout: each late reply is
    logged once with its node and partition, counts as that round's failure and is not metered; a round
    left with fewer than server.min_results usable replies keeps the global model."""
    settings = {"num_clients": 4, "rounds": 3, "seed": 2, "up.scheme": "topk-uniform-ans", "up.fraction": 0.02,
                "down.scheme": "topk-uniform-ans", "down.fraction": 0.03, "faults.slow_client_rate": 0.3,
                "faults.slow_seconds": 2.0, "server.round_timeout": 1.0, "server.min_results": 3}
    summary, rows, grid, log = run_in_process(settings, tmp_path, caplog)
    plan = FaultPlan(slow_rate=0.3, slow_seconds=2.0, seed=2)
    slow = {r: [p for p in range(4) if plan.draw(r, p)["slow"]] for r in (1, 2, 3)}
    assert slow == {1: [0, 2], 2: [], 3: [1]}  # round 1 falls below min_results, round 3 does not
    node = {p: 700 + 3 * p for p in range(4)}
    assert grid.timed_out == [node[p] for r in (1, 2, 3) for p in slow[r]]
    for r, partitions in slow.items():
        for p in partitions:
            assert log.count(f"round {r}: node {node[p]} (partition {p}) failed: timed out") == 1
    assert log.count("failed: timed out") == 3
    assert [(row["clients_usable"], row["clients_timed_out"], row["clients_failed"]) for row in rows] == \
        [(2, 2, 2), (4, 0, 0), (3, 1, 1)]
    assert log.count("fewer than server.min_results = 3; the global model is unchanged") == 1
    assert "round 1: 2 usable training replies" in log
    assert rows[0]["accuracy"] == summary["initial_accuracy"]  # the untrained model, still
    assert rows[1]["loss"] < rows[0]["loss"] - 0.1  # round 2 did update it
    # round 1's good replies still count as in sync: round 2 sends them nothing; the late ones catch up from
    # W_0, which the model still is: a payload of no counts, a few header bytes (never the float32 model)
    down = {c["partition_id"]: c["bytes_down"] for c in rows[1]["clients"]}
    assert down[1] == down[3] == 0 and 0 < down[0] == down[2] < 100
    # metering counts only what arrived: the late replies are in neither the meter nor the loopback's bytes
    assert [len(row["clients"]) for row in rows] == [4, 4, 4]
    assert [sum(c["bytes_up"] > 0 for c in row["clients"]) for row in rows] == [2, 4, 3]
    assert summary["message_bytes_up"] == sum(grid.bytes_up.values())
    assert summary["message_bytes_down"] == sum(grid.bytes_down.values())
