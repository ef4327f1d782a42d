"""The report in a real headless browser: it loads offline, logs no error, and its plots show.

Skips when no Chromium-family browser is installed (``.ci/run`` installs Debian's ``chromium``).
Each check is first shown to fail on a page that is broken on purpose.
"""

import io
import re

import numpy as np
import pytest
from PIL import Image

from browser import find_browser, open_page
from fedcomp.analysis.report import build_report
from runfiles import write_run

BROWSER = find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless browser installed (apt-get install chromium)")


def colour_fraction(png: bytes) -> float:
    """Share of clearly coloured pixels (the plots' lines, bands and bars; text and tables are grey)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float(((pixels.max(-1) - pixels.min(-1)) > 80).mean())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_run(root / "run", {"seed": 1}, [0.3, 0.6, 0.8, 0.85], 4000, 9000, clients=5)
    return build_report(root / "run")


def test_report_renders_without_errors_and_shows_its_plots(report):
    result = open_page(BROWSER, report)
    assert result.errors == []
    assert result.images_ok
    image = Image.open(io.BytesIO(result.screenshot))
    assert image.size == (1200, 2400)
    assert colour_fraction(result.screenshot) > 0.01


def test_the_checks_catch_a_broken_page(report, tmp_path):
    text = report.read_text()
    stripped = re.sub(r'src="data:image/png;base64,[^"]*"', 'src="missing.png"', text)
    broken = tmp_path / "broken.html"
    broken.write_text(stripped.replace("</body>", "<script>console.error('boom')</script></body>"))
    result = open_page(BROWSER, broken)
    assert "boom" in result.errors and any("ERR_FILE_NOT_FOUND" in e for e in result.errors)
    assert not result.images_ok
    assert colour_fraction(result.screenshot) < 0.001
