"""`fedcomp compare` on run folders that cannot be compared ends in one clear error."""

import pytest

from fedcomp.analysis.compare import compare_runs
from fedcomp.errors import FedcompError


@pytest.mark.parametrize("summary,fragment", [
    ("{not json", "not valid JSON"),
    ('{"final_accuracy": 0.9, "rounds": 3}', "no transfer figures"),
])
def test_unusable_summaries(tmp_path, summary, fragment):
    (tmp_path / "summary.json").write_text(summary)
    with pytest.raises(FedcompError, match=fragment):
        compare_runs([tmp_path], tmp_path / "out.md")


def test_no_runs():
    with pytest.raises(FedcompError, match="at least one run"):
        compare_runs([])
