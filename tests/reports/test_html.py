"""The HTML report: self-contained, escaped, sections present or absent, written atomically."""

from __future__ import annotations

import base64
import io
import os
import re

import pytest
from PIL import Image

from transferkit.reports import render_report, write_report


def test_report_escapes_every_user_string(report_inputs):
    page = render_report(**report_inputs)
    assert "<script" not in page.lower()
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "cats &amp; dogs" in page and "say &quot;hi&quot;" in page
    assert "猫 ünïcødé" in page  # non-ASCII kept as is, not mangled
    # Every tag attribute that could load something points inside the page.
    for attr, value in re.findall(r'\s(src|href)="([^"]*)"', page):
        assert value.startswith(("data:", "#")), (attr, value[:60])


def test_report_is_self_contained_with_decodable_pngs(report_inputs):
    page = render_report(**report_inputs)
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == 3 + 4  # curves, confusion, per-class + four mistake thumbnails
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).load()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert '<link rel="stylesheet"' not in page and "@import" not in page


def test_report_has_every_section_and_calls_out_overfitting(report_inputs):
    page = render_report(**report_inputs)
    for anchor in ("training", "strategy", "evaluation", "mistakes", "data", "timings", "config"):
        assert f'<section id="{anchor}">' in page
    assert "Overfitting check." in page and "was best at epoch" in page
    assert "unfrozen at epoch 4" in page  # found where the phase changes
    assert "feature-extract" in page and "1 min 15 s" in page
    assert "… and 70 more" in page  # long lists are truncated, and say so


def test_sections_without_input_are_left_out():
    page = render_report(title="empty", history=[])
    assert '<section id="evaluation">' not in page and '<section id="config">' not in page
    assert "No training history was recorded" in page
    assert "<img" not in page


def test_write_report_is_atomic_and_writes_pngs(tmp_path, report_inputs):
    target = tmp_path / "run" / "report.html"
    out = write_report(target, png_dir=tmp_path / "run" / "plots", **report_inputs)
    assert out == target and target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    names = sorted(p.name for p in (tmp_path / "run" / "plots").iterdir())
    assert names == ["confusion.png", "curves.png", "mistakes.png", "per_class.png"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["plots", "report.html"]  # no temp
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as a plain open()


def test_write_report_failure_keeps_the_old_report(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old", encoding="utf-8")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(target, title="new", history=[])
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_report_rejects_unknown_sections(tmp_path):
    with pytest.raises(TypeError, match="colour"):
        write_report(tmp_path / "r.html", title="t", colour="red")


def test_the_decision_shows_the_compared_features_as_a_table_the_kept_first():
    from transferkit.reports.sections import decision_section

    rows = [
        {
            "cut": "b",
            "features": 4,
            "head": "logistic regression, C=1",
            "cv_accuracy": 0.7,
            "cv_accuracy_std": 0.05,
            "cv_log_loss": 0.8,
        },
        {
            "cut": "a+b",
            "features": 8,
            "head": "logistic regression, C=0.1",
            "cv_accuracy": 0.9,
            "cv_accuracy_std": 0.02,
            "cv_log_loss": 0.3,
        },
        {"cut": "a", "features": 4, "skipped": "not compared: the 30 s budget was spent"},
    ]
    html = decision_section({"strategy": "feature-extract", "cut": "a+b", "candidates": rows})
    table = html[html.index('<table class="candidates">') :]
    assert table.index("a+b (kept)") < table.index("<td>b</td>")
    assert "90.0% &plusmn; 2.0%" in table and "not compared: the 30 s budget" in table
    assert "candidates" not in html[: html.index('<table class="candidates">')]
