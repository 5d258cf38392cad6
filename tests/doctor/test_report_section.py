"""The report's Data doctor section and the confusion matrix's links to the images
behind each wrong cell, in the HTML and in headless Chromium."""

from __future__ import annotations

import json
import re

import pytest
from doctor_data import TINY

from transferkit.cli import main


@pytest.fixture(scope="module")
def doctored(trained, planted, tmp_path_factory):
    """A copy of the shared run with the doctor's findings on the planted data."""
    run = trained.copy(tmp_path_factory.mktemp("doctored") / "run")
    assert main(["doctor", str(planted), *TINY, "--run", str(run), "--json"]) == 0
    return run


def test_doctor_run_records_findings_and_the_report_shows_them(doctored):
    record = json.loads((doctored / "doctor.json").read_text())
    assert record["source"] == "doctor" and record["suspected_mislabels"]
    page = (doctored / "report.html").read_text()
    section = page.split('<section id="doctor">')[1].split("</section>")[0]
    assert "given <b>blue</b><br>looks like <b>red</b>" in section
    assert "train/blue/wrong.png" in section
    assert "Leaks (2)" in section and "test/green/copy.png" in section
    assert section.count('class="thumb"') >= 5  # suspects, leak members, outliers
    assert "image unavailable" not in section


def test_confusion_counts_link_to_galleries_of_the_images_behind_them(trained, tmp_path):
    run = trained.copy(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    links = re.findall(r'<a href="#(cell-\d+-\d+)">', page)
    assert links, "the run has a confident mistake: at least one wrong cell"
    for anchor in links:
        assert f'<div id="{anchor}">' in page
    gallery = page.split(f'<div id="{links[0]}">')[1].split("</div></div>")[0]
    assert 'class="thumb"' in gallery and "<script" not in page


@pytest.mark.slow
def test_the_doctor_section_renders_in_headless_chromium(doctored, tmp_path):
    """The run's Doctor section alone on a page (so it is in the screenshot), as
    Chromium lays it out: texts off the dumped DOM, every thumbnail decoded."""
    from PIL import Image, ImageStat

    from chromium import dump_dom, find_browser, screenshot, texts_by_id
    from transferkit.reports.html import write_report
    from transferkit.reports.run_report import run_report_content

    executable = find_browser()
    if executable is None:
        pytest.skip("chromium is not installed (see tests/chromium.py)")
    content = run_report_content(doctored)
    page = write_report(tmp_path / "doctor.html", title="doctor", doctor=content["doctor"])
    url = page.as_uri()
    text = texts_by_id(dump_dom(executable, tmp_path / "profile", url))["doctor"]
    assert "Suspected mislabels (1)" in text and "looks like red" in text
    assert "Leaks (2)" in text and "test/red/resized.png" in text
    png = screenshot(executable, tmp_path / "profile", url, tmp_path / "doctor.png", (1200, 1400))
    with Image.open(png) as image:
        grey = image.convert("L")
        assert ImageStat.Stat(grey).stddev[0] > 10  # thumbnails and text, not a blank page
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 50
