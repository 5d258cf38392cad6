"""The run report: one self-contained HTML file, plots embedded, no script, no fetches.

Why self-contained: a report is mailed, attached to tickets and opened years later from
an archive; it must not depend on files beside it or on the network. The page carries a
Content-Security-Policy that forbids every external resource and all scripts, so even a
hostile string that escaped escaping could not run or phone home.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._version import __version__
from . import sections as s
from .history import phase_change_epoch
from .metrics import Metrics, rescale
from .overfitting import overfitting_gap
from .plots import (
    plot_confusion,
    plot_curves,
    plot_mistakes,
    plot_per_class,
    plot_reliability,
)
from .stats import as_count

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
 max-width:1200px;margin:0 auto;padding:0 20px 40px;background:#fff}
h1{margin:24px 0 4px}h2{border-bottom:2px solid #e5e5e5;padding-bottom:4px;margin-top:36px}
nav a{margin-right:14px;color:#1f5fa8;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:18px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:120px;background:#fafafa}
.card .v{font-size:22px;font-weight:600}.card .k{color:#666;font-size:13px}
.callout{border-left:5px solid #999;background:#f4f4f4;padding:10px 14px;border-radius:4px}
.callout.warn{border-color:#d62728;background:#fdecea}.callout.ok{border-color:#2ca02c;background:#edf7ed}
.callout.info{border-color:#1f77b4;background:#eaf2fb}
img.figure{max-width:100%;height:auto;display:block;margin:12px 0}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.figs img{max-width:100%}
table{border-collapse:collapse;margin:10px 0}
th,td{padding:4px 10px;vertical-align:top;text-align:left}
table.grid th{background:#f0f0f0;border-bottom:1px solid #ccc}
table.grid td{border-bottom:1px solid #eee}
table.kv th{color:#555;font-weight:600;padding-right:16px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.absent td{color:#999;font-style:italic}
.mistakes{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.mistakes figure{margin:0;border:1px solid #eee;border-radius:6px;padding:6px;background:#fcfcfc}
img.thumb{width:100%;height:auto;image-rendering:pixelated;background:#eee}
figcaption{font-size:13px;margin-top:4px;word-break:break-word}.path{color:#777;font-size:11px}
.noimg{height:100px;display:flex;align-items:center;justify-content:center;background:#eee;color:#777}
pre{background:#f6f8fa;padding:12px;border-radius:6px;overflow:auto;font-size:13px}
.card .ci{color:#666;font-size:12px;max-width:220px}.card .ci.few{color:#a04000}
.note{color:#555}.strategy{font-size:18px}footer{margin-top:40px;color:#888;font-size:12px}
"""


@dataclass
class ReportContent:
    """What a report shows; every section whose input is None is left out.

    Attributes:
        title: page heading (e.g. the run's name).
        metrics: evaluation on the validation/test set (``compute_metrics``).
        history: per-epoch rows of both phases (see ``reports.history``).
        data_report: the data layer's dict (usable/unusable files and why, class counts).
        decision: the strategy choice, ``{"strategy", "reason", ...scores}``.
        timings: named durations in seconds (shown when ``record`` holds no times).
        config: the resolved run configuration.
        mistakes: ``{"image": PIL.Image | None, "true", "pred", "confidence", "path"}``
            per mistake, most confident first (``most_confident_mistakes``).
        unfreeze_epoch: first fine-tune epoch; when None, found where the phase changes.
        reliability: ``{"probabilities", "labels", "temperature", "split", "ece",
            "ece_uncalibrated", "reason"}``: the evaluated images' calibrated
            probabilities and what calibration did (the Calibration section).
        cells: per wrong confusion cell ``{"i", "j", "true", "pred", "count", "images"}``
            (``images`` as ``mistakes``' rows): galleries the matrix's counts link to.
        doctor: the data doctor's findings (``RUN/doctor.json`` with thumbnails:
            ``{"source", "suspects", "n_suspects", "leaks": [{"kind", "members"}],
            "outliers"}``, each row with its ``image``).
        trust_html: the "How far to trust it" part after the calibration numbers
            (``run_report.run_trust_section``): the unknown threshold, what the
            prediction sets promise and cost, the least certain validation images.
        record: the run's ``metrics.json``: its ``phases`` say which epoch's weights were
            saved and how long each phase took; ``val_accuracy``/``test_accuracy`` and
            ``n_val``/``n_test`` are the saved model's headline numbers, shown with their
            95% intervals; ``seconds_total``, ``strategy`` and ``backbone`` too.
    """

    title: str
    metrics: Metrics | None = None
    history: Sequence[Mapping] | None = None
    data_report: Mapping | None = None
    decision: Mapping | None = None
    timings: Mapping | None = None
    config: Mapping | None = None
    mistakes: Sequence[Mapping] | None = None
    unfreeze_epoch: int | None = None
    record: Mapping | None = None
    reliability: Mapping | None = None
    cells: Sequence[Mapping] | None = None
    doctor: Mapping | None = None
    trust_html: str | None = None

    def __post_init__(self) -> None:
        self.history = list(self.history or [])
        if self.unfreeze_epoch is None:
            self.unfreeze_epoch = phase_change_epoch(self.history)

    def overfitting(self) -> dict:
        """The overfitting check, judged with what ``record`` says of the saved model."""
        record = self.record or {}
        return overfitting_gap(
            self.history,
            phases=record.get("phases"),
            n_val=as_count(record.get("n_val")),
            val_accuracy=record.get("val_accuracy"),
        )


def render_report(**content) -> str:
    """Build the report page and return its HTML.

    Args:
        **content: the fields of :class:`ReportContent` as keywords (``title`` is
            required; every section whose input is missing or None is left out).

    Example:
        >>> page = render_report(title="run <1>", history=[])
        >>> "run &lt;1&gt;" in page and "<script" not in page
        True
    """
    content = ReportContent(**content)
    return _page(content, render_figures(content))


def render_figures(content: ReportContent) -> dict[str, bytes]:
    """The PNGs the page embeds, by file name (``curves.png``, ``confusion.png``, ...)."""
    figures: dict[str, bytes] = {}
    if content.history:
        gap = content.overfitting()
        figures["curves.png"] = plot_curves(
            content.history,
            unfreeze_epoch=content.unfreeze_epoch,
            best_epoch=gap["best_epoch"] if gap["from_phases"] else None,
        )
    if content.metrics is not None:
        m = content.metrics
        figures["confusion.png"] = plot_confusion(m.confusion, m.classes)
        figures["per_class.png"] = plot_per_class(m)
    r = content.reliability
    if r is not None and len(r.get("labels", [])):
        after = np.asarray(r["probabilities"], dtype=float)
        t = r.get("temperature", 1.0)
        before = rescale(after, 1.0 / t) if t != 1.0 else None
        figures["reliability.png"] = plot_reliability(before, after, np.asarray(r["labels"]))
    return figures


def write_report(
    path: str | os.PathLike, *, png_dir: str | os.PathLike | None = None, **content
) -> Path:
    """Render the report and write it atomically; return the path written.

    Args:
        path: where ``report.html`` goes; missing parent folders are created.
        png_dir: also write each plot there as a PNG file (plus ``mistakes.png``), for
            people who want the images on their own.
        **content: the keyword arguments of :func:`render_report`.

    Why atomic (temp file + ``os.replace``): a crash or a concurrent reader never sees
    a half-written report, and an older complete report is only ever replaced whole.
    """
    content = ReportContent(**content)
    figures = render_figures(content)
    text = _page(content, figures)
    if png_dir is not None:
        shown = [m for m in content.mistakes or [] if m.get("image") is not None]
        if shown:
            figures["mistakes.png"] = plot_mistakes(
                [m["image"] for m in shown],
                [str(m.get("true")) for m in shown],
                [str(m.get("pred")) for m in shown],
                [float(m.get("confidence") or 0.0) for m in shown],
            )
        for name, png in figures.items():
            atomic_write_bytes(Path(png_dir) / name, png)
    path = Path(path)
    # a file name that is not UTF-8 shows as its escapes (caf\udce9.png), as in predictions.csv
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    The temp file is created with mode 0o666 filtered by the umask (as ``open`` would),
    not ``mkstemp``'s 0o600, so the report is as readable as any other file in the run.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _page(c: ReportContent, figures: Mapping[str, bytes]) -> str:
    gap = c.overfitting()
    parts = _sections(c, figures, gap)
    nav = "".join(f'<a href="#{a}">{s.esc(h)}</a>' for a, h, _ in parts)
    body = "\n".join(s.section(a, h, b) for a, h, b in parts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{s.esc(c.title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{s.esc(c.title)}</h1>
<nav>{nav}</nav>
{s.summary_cards(c.metrics, c.decision, gap, c.record)}
</header>
{body}
<footer>Generated by transferkit {s.esc(__version__)}.</footer>
</body>
</html>
"""


def _sections(
    c: ReportContent, figures: Mapping[str, bytes], gap: dict
) -> list[tuple[str, str, str]]:
    """The page's sections as (anchor, heading, body HTML), in page order."""
    curves = figures.get("curves.png")
    training = s.training_section(c.history, curves, c.unfreeze_epoch, gap, c.record)
    parts = [("training", "Training", training)]
    if c.decision is not None:
        parts.append(("strategy", "Strategy decision", s.decision_section(c.decision)))
    if (c.record or {}).get("selection"):
        selection = s.selection_section(c.record["selection"])
        parts.append(("selection", "Model selection", selection))
    if c.metrics is not None:
        body = s.evaluation_section(
            c.metrics, figures.get("confusion.png"), figures.get("per_class.png")
        )
        linked = {(cell["i"], cell["j"]) for cell in c.cells or []}
        body += "\n" + s.confusion_links_table(c.metrics, linked)
        parts.append(("evaluation", "Evaluation", body))
    if c.reliability is not None or c.trust_html:
        body = ""
        if c.reliability is not None:
            body = s.calibration_section(c.reliability, figures.get("reliability.png"))
        body += "\n" + (c.trust_html or "")
        parts.append(("trust", "How far to trust it", body))
    parts += _image_sections(c)
    if c.data_report is not None:
        parts.append(("data", "Data report", s.value_html(c.data_report)))
    record = c.record or {}
    if record.get("phases") or record.get("seconds_total") is not None:
        parts.append(("timings", "Timings", s.run_timings_section(record)))
    elif c.timings is not None:
        parts.append(("timings", "Timings", s.timings_section(c.timings)))
    if c.config is not None:
        parts.append(("config", "Configuration", s.config_section(c.config)))
    return parts


def _image_sections(c: ReportContent) -> list[tuple[str, str, str]]:
    """The sections of thumbnails: confident mistakes, the images behind each wrong
    confusion cell (the matrix's counts link there), the data doctor's findings."""
    parts = []
    if c.mistakes is not None:
        parts.append(("mistakes", "Most confident mistakes", s.mistakes_section(c.mistakes)))
    if c.cells:
        parts.append(("cells", "Confusion cells", s.cells_section(c.cells)))
    if c.doctor is not None:
        parts.append(("doctor", "Data doctor", s.doctor_section(c.doctor)))
    return parts
