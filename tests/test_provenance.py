"""The commit a results file names, against a commit whose hash is computed here from git's object format."""

import hashlib
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import fedcomp.records.provenance as provenance
from fedcomp.records.provenance import source_commit

IDENTITY = "Ada <ada@example.org> 1700000000 +0000"


def _object(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


def _copy_of_the_module(folder: Path):
    """fedcomp's provenance module, loaded from a copy in ``folder`` (so it reads the checkout there)."""
    shutil.copy(provenance.__file__, folder / "provenance_copy.py")
    spec = importlib.util.spec_from_file_location("provenance_copy", folder / "provenance_copy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_commit_names_the_checkouts_head(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("fedcomp\n")
    name, email, when = "Ada", "ada@example.org", "1700000000 +0000"
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": when,
           "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email, "GIT_COMMITTER_DATE": when}
    for args in (["init", "-q"], ["add", "a.txt"], ["commit", "-q", "-m", "m"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    # the same commit built by hand: blob, tree, commit objects
    blob = _object("blob", b"fedcomp\n")
    tree = _object("tree", b"100644 a.txt\0" + bytes.fromhex(blob))
    commit = _object("commit", f"tree {tree}\nauthor {IDENTITY}\ncommitter {IDENTITY}\n\nm\n".encode())
    short = _copy_of_the_module(repo).source_commit()
    assert len(short) >= 7 and commit.startswith(short)


def test_source_commit_outside_a_checkout_is_unknown(tmp_path):
    assert _copy_of_the_module(tmp_path).source_commit() == "unknown"


def test_source_commit_without_git_is_unknown(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert source_commit() == "unknown"
