"""Refactors change no result: a short run of every preset reproduces tests/golden/preset_runs.json exactly.

The reference holds each preset's settings as recorded, so a preset retuned later still checks the code
against the same settings. A change that is meant to alter results regenerates the file
(``python tests/golden/make_preset_runs.py``) and says why in its commit.
"""

import json
from pathlib import Path

import pytest

from fedcomp.compress.codec.deepcabac import available as deepcabac_available
from fedcomp.run.config import resolve
from golden.make_preset_runs import short_run

REFERENCE = json.loads((Path(__file__).resolve().parent / "golden" / "preset_runs.json").read_text())


def _case(name: str):
    """A preset coding with DeepCABAC is skipped, saying so, where the deepcabac extra is not installed."""
    config = resolve(REFERENCE[name]["settings"])
    missing = "deepcabac" in (config["up.codec"], config["down.codec"]) and not deepcabac_available()
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"preset {name} codes with DeepCABAC: needs "
                                                                       "the deepcabac extra (nncodec)"))


@pytest.mark.parametrize("name", [_case(name) for name in sorted(REFERENCE)])
def test_a_short_run_reproduces_the_reference(name):
    want = REFERENCE[name]
    assert short_run(want["settings"]) == want["rows"]
