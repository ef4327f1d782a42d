"""The commit a results file names."""

import subprocess

from conftest import ROOT
from fedcomp.records.provenance import source_commit


def test_source_commit_is_the_checkouts_head():
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    assert source_commit() == (head.stdout.strip() if head.returncode == 0 else "unknown")


def test_source_commit_without_git_is_unknown(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert source_commit() == "unknown"
