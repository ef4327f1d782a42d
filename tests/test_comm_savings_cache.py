"""benchmarks/comm_savings.py's run cache: what a key sees, and which cached runs count as stale."""

import subprocess
from pathlib import Path

import benchmarks.comm_savings as cs

ROOT = Path(__file__).resolve().parent.parent


def test_a_setting_at_its_default_keeps_the_key_and_any_other_value_changes_it():
    base = {**cs.WORKLOADS["digits"], **cs.uniform(-16), "seed": 0}
    assert cs.run_key({**base, "rounds": 20}) == cs.run_key(base)  # 20 is the default
    assert cs.run_key({**base, "rounds": 21}) != cs.run_key(base)
    assert cs.run_key({**base, "seed": 1}) != cs.run_key(base)
    assert cs.run_key({**base, "output.preset": "x"}) == cs.run_key(base)  # mechanics, not results


def test_a_run_measured_before_a_listed_change_is_stale_and_one_after_it_is_not(monkeypatch):
    log = subprocess.run(["git", "log", "--format=%h", "-3"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    newest, older, oldest = log
    monkeypatch.setattr(cs, "STALE_SINCE", [("STC", older, "1/25 changed")])
    monkeypatch.setattr(cs, "STALE_CAUSE", {older: "a test change"})
    record = {"family": "STC", "knob": "fraction 1/25", "commit": oldest}
    assert cs.stale_because(record) == f"measured at {oldest}, before {older} (a test change; 1/25 changed)"
    assert cs.stale_because({**record, "family": "preset", "knob": "stc"}, ["STC fraction 1/400"]) is not None
    assert cs.stale_because({**record, "commit": older}) is None
    assert cs.stale_because({**record, "commit": newest}) is None
    assert cs.stale_because({**record, "family": "top-k+EF", "commit": oldest}) is None
