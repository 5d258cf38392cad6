"""The report renders in a real browser: headless Chromium, every image loaded, no errors.

Chromium is driven over the DevTools protocol on ``--remote-debugging-pipe`` (file
descriptors 3 and 4, NUL-separated JSON), so the test needs no Python package beyond the
standard library and the report itself stays script-free. Console errors, uncaught
exceptions and browser log errors (a CSP violation, a resource that failed to load) are
collected as events while the page loads.
"""

from __future__ import annotations

import os

import pytest

from chromium import Chromium, find_browser, page_errors  # noqa: F401
from transferkit.reports import write_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = find_browser()
    if executable is None:
        if os.environ.get("TRANSFERKIT_BROWSER_TESTS", "1") == "0":
            pytest.skip("chromium is not installed and TRANSFERKIT_BROWSER_TESTS=0")
        pytest.fail(
            "chromium is not installed: run `make sysdeps` (apt-get install chromium), "
            "or set TRANSFERKIT_BROWSER_TESTS=0 to skip the browser tests"
        )
    chromium = Chromium(executable, tmp_path_factory.mktemp("chromium") / "profile")
    yield chromium
    chromium.close()


def test_report_renders_in_headless_chromium_with_every_image_loaded(
    browser, tmp_path, report_inputs
):
    report = write_report(tmp_path / "report.html", **report_inputs)
    page, errors = browser.check(report.as_uri())
    assert errors == []
    assert page["title"] == "run <script>alert(1)</script>"  # escaped text, shown as text
    assert page["scripts"] == 0
    assert page["fetched"] == []  # nothing loaded from outside the file
    assert len(page["images"]) == 7
    broken = [i["alt"] for i in page["images"] if not (i["complete"] and i["width"] > 0)]
    assert broken == []


def test_the_browser_check_catches_broken_images_and_console_errors(browser, tmp_path):
    """Guard against a check that passes vacuously: a bad page must fail it."""
    page_path = tmp_path / "broken.html"
    page_path.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title>'
        '<link rel="icon" href="data:,"></head><body>'
        '<img alt="missing" src="missing.png"><script>console.error("boom")</script>'
        "</body></html>",
        encoding="utf-8",
    )
    page, errors = browser.check(page_path.as_uri())
    assert [i["width"] for i in page["images"]] == [0]
    assert any("boom" in e for e in errors)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors)
