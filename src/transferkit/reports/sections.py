"""HTML fragments for the report, one function per section; ``html`` assembles them.

Every string that reaches the page goes through :func:`esc` (class names, paths, config
values and dict keys are user data and may hold ``<``, ``&``, quotes or non-ASCII);
images become ``data:`` URIs so the page stays one self-contained file.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import PurePath

import numpy as np

from .history import phase_seconds
from .metrics import Metrics
from .plots import png_bytes, thumbnail
from .stats import SMALL_SPLIT, TOO_FEW, as_count, interval_range, interval_text
from .timings import human_duration, slug, timing_rows

MAX_LIST_ITEMS = 50  # a data report can list thousands of bad files; the page stays readable
MAX_TABLE_ROWS = 200
MAX_DEPTH = 4


def esc(value: object) -> str:
    """HTML-escape ``str(value)``, quotes included, so it is safe in text and attributes."""
    return html.escape(str(value), quote=True)


def img_tag(png: bytes, alt: str, css_class: str = "figure") -> str:
    """An ``<img>`` with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def section(anchor: str, heading: str, body: str) -> str:
    """One titled section of the page."""
    return f'<section id="{anchor}">\n<h2>{esc(heading)}</h2>\n{body}\n</section>'


def summary_cards(
    metrics: Metrics | None, decision: Mapping | None, gap: dict, record: Mapping | None = None
) -> str:
    """The headline numbers, first thing on the page: the saved model's accuracies
    (metrics.json's, each with its 95% interval), the evaluated split's other metrics,
    the strategy, the backbone and the epoch whose weights were saved."""
    record = record or {}
    cards = _accuracy_cards(record, metrics)
    if metrics is not None:
        cards += _metric_cards(metrics)
    strategy = record.get("strategy") or (decision or {}).get("strategy")
    if strategy is not None:
        cards.append(("strategy", "strategy", esc(strategy), ""))
    if record.get("backbone"):
        cards.append(("backbone", "backbone", esc(record["backbone"]), ""))
    if gap.get("best_epoch") is not None:
        label = (
            f"saved epoch ({gap['best_phase']} phase)"
            if gap.get("from_phases")
            else "best validation epoch"
        )
        cards.append(("saved-epoch", label, str(gap["best_epoch"]), ""))
    return _cards_html(cards)


def _accuracy_cards(record: Mapping, metrics: Metrics | None) -> list[tuple[str, str, str, str]]:
    """Test and validation accuracy of the saved model, as metrics.json records them;
    without them, the evaluated split's accuracy."""
    cards = []
    for split, name in (("test", "test"), ("val", "validation")):
        accuracy = record.get(f"{split}_accuracy")
        if _is_number(accuracy):
            ci = interval_text(float(accuracy), as_count(record.get(f"n_{split}")))
            cards.append((f"{split}-accuracy", f"{name} accuracy", _pct(accuracy), ci))
    if not cards and metrics is not None:
        ci = interval_text(metrics.accuracy, metrics.n)
        cards.append(("accuracy", "accuracy", _pct(metrics.accuracy), ci))
    return cards


def _metric_cards(metrics: Metrics) -> list[tuple[str, str, str, str]]:
    cards = [("balanced-accuracy", "balanced accuracy", _pct(metrics.balanced_accuracy), "")]
    cards += [
        (f"top-{k}-accuracy", f"top-{k} accuracy", _pct(v), "")
        for k, v in sorted(metrics.top_k_accuracy.items())
        if k > 1
    ]
    cards += [
        ("macro-f1", "macro F1", _num(metrics.macro_f1), ""),
        ("ece", "calibration error (ECE)", _num(metrics.ece), ""),
        ("examples", "examples evaluated", f"{metrics.n:,}", ""),
    ]
    return cards


def _cards_html(cards: list[tuple[str, str, str, str]]) -> str:
    """Cards as ``(id, label, value HTML, note)``; the note is small print under the label."""
    if not cards:
        return ""
    items = []
    for key, label, value, note in cards:
        few = " few" if note.endswith(TOO_FEW) else ""
        small = f'\n<div class="ci{few}">{esc(note)}</div>' if note else ""
        items.append(
            f'<div class="card" id="card-{key}">\n<div class="v">{value}</div>\n'
            f'<div class="k">{esc(label)}</div>{small}\n</div>'
        )
    return f'<div class="cards">{"".join(items)}</div>'


def training_section(
    history: Sequence[Mapping],
    curves_png: bytes | None,
    unfreeze_epoch: int | None,
    gap: dict,
    record: Mapping | None = None,
) -> str:
    """Curves for both phases, the unfreeze point, the call-out that watches
    overfitting, and each phase's epochs and time (metrics.json's when recorded)."""
    if not history:
        return "<p>No training history was recorded for this run.</p>"
    if (record or {}).get("selection") and len(history) == 1:
        return _one_step_note(record)
    level = {True: "warn", False: "ok"}.get(gap.get("overfitting"), "info")
    if level == "ok" and gap.get("n_val") and gap["n_val"] < SMALL_SPLIT:
        level = "info"
    parts = [
        f'<p class="callout {level}" id="overfitting"><strong>Overfitting check.</strong> '
        f"{esc(gap['sentence'])}</p>"
    ]
    if curves_png is not None:
        parts.append(
            img_tag(curves_png, "Training curves: loss, accuracy and learning rate per epoch")
        )
    notes = []
    if unfreeze_epoch is not None:
        notes.append(
            f"The base was unfrozen at epoch {esc(unfreeze_epoch)} (dashed line, shaded after)."
        )
    notes.append("Phases — " + "; ".join(_phase_notes(history, record)) + ".")
    parts.append(f'<p class="note" id="phase-times">{" ".join(notes)}</p>')
    return "\n".join(parts)


def _one_step_note(record: Mapping) -> str:
    """A head fitted in one step (chosen by cross-validation): no epochs to plot."""
    selection = record["selection"]
    seconds = sum(p.get("seconds") or 0 for p in record.get("phases", []))
    return (
        '<p class="callout info" id="overfitting"><strong>One step, no epochs.</strong> '
        f"The head ({esc(selection.get('chosen'))}) was fitted to convergence in one step, "
        f"in {esc(_duration(seconds))}, and chosen by cross-validation: see "
        '<a href="#selection">Model selection</a> for how every candidate scored on '
        "images it did not see. There are no training curves to watch for "
        "overfitting; the cross-validated accuracy is the check.</p>"
    )


def _phase_notes(history: Sequence[Mapping], record: Mapping | None) -> list[str]:
    """``"head: 5 epochs, 1.23 s"`` per phase: metrics.json's phase times (as the timings
    table shows them) when recorded, else the sum of the history's epoch times."""
    phases = [p for p in (record or {}).get("phases") or [] if isinstance(p, Mapping)]
    if not phases:
        return [
            f"{esc(name)}: {_epochs(n)}, {esc(_duration(sec))}"
            for name, (n, sec) in phase_seconds(history).items()
        ]
    rows = {r.key: r for r in timing_rows(record)}
    notes = []
    for phase in phases:
        row = rows[f"phase-{slug(phase.get('name'))}"]
        n = phase.get("epochs_run")
        epochs = f"{_epochs(n)}, " if isinstance(n, int) else ""
        notes.append(f"{esc(phase.get('name'))}: {epochs}{esc(row.text())}")
    return notes


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def evaluation_section(
    metrics: Metrics, confusion_png: bytes | None, per_class_png: bytes | None
) -> str:
    """Overall numbers (accuracy with its 95% interval), a warning when few images
    were evaluated, confusion matrix, per-class chart and table."""
    ci = interval_text(metrics.accuracy, metrics.n)
    rows = [
        ("accuracy", _pct(metrics.accuracy) + (f" ({esc(ci)})" if ci else "")),
        ("balanced accuracy", _pct(metrics.balanced_accuracy)),
    ]
    rows += [(f"top-{k} accuracy", _pct(v)) for k, v in sorted(metrics.top_k_accuracy.items())]
    rows += [
        ("macro F1", _num(metrics.macro_f1)),
        ("expected calibration error", _num(metrics.ece)),
    ]
    rows += [("examples", f"{metrics.n:,}"), ("classes", str(len(metrics.classes)))]
    overall = "".join(
        f'<tr id="eval-{slug(k)}"><th>{esc(k)}</th><td class=num>{v}</td></tr>' for k, v in rows
    )
    parts = [
        _small_split_callout(metrics.accuracy, metrics.n),
        f'<table class="kv">{overall}</table>',
    ]
    figs = [
        img_tag(p, alt)
        for p, alt in ((confusion_png, "Confusion matrix"), (per_class_png, "F1 per class"))
        if p
    ]
    if figs:
        parts.append(f'<div class="figs">{"".join(figs)}</div>')
    parts.append(per_class_table(metrics))
    return "\n".join(p for p in parts if p)


def _small_split_callout(accuracy: float, n: int) -> str:
    if n >= SMALL_SPLIT:
        return ""
    return (
        f'<p class="callout info" id="small-split">Evaluated on only {n:,} images: an '
        f"accuracy measured on so few is a rough estimate ({esc(interval_range(accuracy, n))}). "
        "A difference of a few images between two runs says nothing about which is better; "
        "a test split of a few hundred images would.</p>"
    )


def per_class_table(metrics: Metrics) -> str:
    """Precision, recall, F1 and support per class, with the class each is most confused with."""
    cm = np.asarray(metrics.confusion)
    body = []
    for i, c in enumerate(metrics.per_class):
        off = cm[i].copy()
        off[i] = 0
        j = int(off.argmax()) if off.size else 0
        confused = f"{esc(metrics.classes[j])} ({off[j]})" if off.size and off[j] > 0 else "—"
        flag = (
            ' class="absent" title="no examples of this class in the labels"'
            if c.support == 0
            else ""
        )
        body.append(
            f"<tr{flag}><td>{esc(c.name)}</td><td class=num>{c.precision:.3f}</td>"
            f"<td class=num>{c.recall:.3f}</td><td class=num>{c.f1:.3f}</td>"
            f"<td class=num>{c.support:,}</td><td>{confused}</td></tr>"
        )
    columns = ("class", "precision", "recall", "F1", "support", "most often predicted instead")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    return f'<table class="grid"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def figure_html(image, alt: str, caption: str) -> str:
    """One thumbnail (PIL image; None: a grey "image unavailable" box) with its
    caption (HTML, escaped by the caller), for the report's image grids."""
    pic = (
        img_tag(png_bytes(thumbnail(image)), alt, "thumb")
        if image is not None
        else '<div class="noimg">image unavailable</div>'
    )
    return f"<figure>{pic}<figcaption>{caption}</figcaption></figure>"


def mistakes_section(mistakes: Sequence[Mapping]) -> str:
    """The most confident mistakes as a grid of thumbnails with escaped captions."""
    if not mistakes:
        return "<p>No mistakes: every evaluated example was classified correctly.</p>"
    cells = []
    for m in mistakes:
        alt = f"true {m.get('true')}, predicted {m.get('pred')}"
        caption = (
            f"true <b>{esc(m.get('true'))}</b><br>"
            f"pred <b>{esc(m.get('pred'))}</b> ({_pct(m.get('confidence'))})"
        )
        if m.get("path") is not None:
            caption += f'<br><span class="path">{esc(m["path"])}</span>'
        cells.append(figure_html(m.get("image"), alt, caption))
    intro = '<p class="note">Wrong predictions made with the highest confidence first.</p>'
    return f'{intro}<div class="mistakes">{"".join(cells)}</div>'


def decision_section(decision: Mapping) -> str:
    """The strategy chosen, why, and the measurements behind it (data size and similarity)."""
    parts = []
    if decision.get("strategy") is not None:
        parts.append(
            f'<p class="strategy">Strategy: <strong>{esc(decision["strategy"])}</strong></p>'
        )
    if decision.get("reason"):
        parts.append(f'<p class="callout info">{esc(decision["reason"])}</p>')
    if decision.get("candidates"):
        parts.append(_candidates_table(decision["candidates"], decision.get("cut")))
    rest = {k: v for k, v in decision.items() if k not in ("strategy", "reason", "candidates")}
    if rest:
        parts.append(value_html(rest))
    return "\n".join(parts)


def _candidates_table(rows, kept) -> str:
    """The features compared by cross-validation on small data, the kept one first."""
    rows = sorted(rows, key=lambda r: (r.get("cut") != kept, -(r.get("cv_accuracy") or 0)))
    body = []
    for r in rows:
        attr = ' class="chosen"' if r.get("cut") == kept else ""
        name = esc(r.get("cut")) + (" (kept)" if r.get("cut") == kept else "")
        if "skipped" in r:
            cells = f'<td colspan="3">{esc(r["skipped"])}</td>'
        else:
            score = f"{_pct(r.get('cv_accuracy'))} &plusmn; {_pct(r.get('cv_accuracy_std'))}"
            loss = _num(r.get("cv_log_loss"))
            cells = f"<td>{esc(r.get('head'))}</td><td>{score}</td><td>{loss}</td>"
        size = f"<td class=num>{r.get('features')}</td>"
        body.append(f"<tr{attr}><td>{name}</td>{size}{cells}</tr>")
    return (
        '<table class="candidates"><caption>Features compared by cross-validation '
        "(each with its best head)</caption><thead><tr><th>features at</th><th>size</th>"
        "<th>best head</th><th>cross-validated accuracy (&plusmn; std over folds)</th>"
        f"<th>log-loss</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def selection_section(selection: Mapping) -> str:
    """How cross-validation chose the head: every candidate's score, the kept one first."""
    chosen = selection.get("chosen")
    folds = selection.get("folds") or 0
    pooled = selection.get("validation_pooled")
    images = selection.get("images")
    which = "training and validation" if pooled else "training"
    how = (
        f"The head was chosen by {folds}-fold stratified cross-validation on the "
        f"{images} {which} images, then refitted on all of them. "
        + (
            "Each validation image's prediction comes from the fold model that did not "
            "see it: the validation accuracy reported is of those predictions."
            if pooled
            else "The validation images were held out from all of it."
        )
        if folds
        else "Too few images to cross-validate (a class has one image): the default "
        "penalty was fitted on every image."
    )
    rows = sorted(
        selection.get("candidates", []),
        key=lambda c: (c.get("candidate") != chosen, -(c.get("cv_accuracy") or 0)),
    )
    body = "".join(_selection_row(c, c.get("candidate") == chosen) for c in rows)
    table = (
        '<table class="selection"><thead><tr><th>candidate</th>'
        "<th>cross-validated accuracy (&plusmn; std over folds)</th><th>log-loss</th>"
        f"</tr></thead><tbody>{body}</tbody></table>"
    )
    return f'<p class="callout info">{esc(how)}</p>' + (table if folds else "")


def _selection_row(c: Mapping, kept: bool) -> str:
    name = esc(c.get("candidate")) + (" (kept)" if kept else "")
    score = f"{_pct(c.get('cv_accuracy'))} &plusmn; {_pct(c.get('cv_accuracy_std'))}"
    attr = ' class="chosen"' if kept else ""
    return f"<tr{attr}><td>{name}</td><td>{score}</td><td>{_num(c.get('cv_log_loss'))}</td></tr>"


def calibration_section(reliability: Mapping, figure: bytes | None) -> str:
    """Temperature scaling: the temperature, ECE before and after, and the
    reliability diagram (or why no temperature was fitted)."""
    t = reliability.get("temperature", 1.0)
    split = reliability.get("split") or "evaluation"
    before, after = reliability.get("ece_uncalibrated"), reliability.get("ece")
    if t == 1.0:
        why = reliability.get("reason") or "none was fitted"
        text = (
            f"No temperature was fitted ({why}): the probabilities are the model's own. "
            f"Expected calibration error on the {split} images: {_num(after)}."
        )
    else:
        text = (
            f"The logits are divided by a temperature of {_num(t)}, fitted on held-out "
            f"validation predictions; it changes confidence, never the predicted class. "
            f"Expected calibration error on the {split} images: {_num(before)} before, "
            f"{_num(after)} after."
        )
    body = f'<p class="callout info">{esc(text)}</p>'
    if figure is not None:
        alt = "before and after calibration" if t != 1.0 else "of the model's probabilities"
        body += img_tag(figure, f"reliability diagram {alt}")
    return body


def timings_section(timings: Mapping) -> str:
    """Wall-clock times (values in seconds) in human units."""
    cells = {k: _duration(v) if _is_number(v) else value_html(v) for k, v in timings.items()}
    rows = "".join(f"<tr><th>{esc(k)}</th><td class=num>{v}</td></tr>" for k, v in cells.items())
    return f'<table class="kv">{rows}</table>'


def run_timings_section(record: Mapping) -> str:
    """Each phase's time, the rest of the fit and the total, from metrics.json, in
    numbers that add up as shown (see ``reports.timings``)."""
    rows = "".join(
        f'<tr id="time-{r.key}"><th>{esc(r.label)}</th><td class=num>{esc(r.text())}</td></tr>'
        for r in timing_rows(record)
    )
    return f'<table class="kv">{rows}</table>'


def config_section(config: Mapping) -> str:
    """The resolved configuration as indented JSON, exactly as written to the run."""
    text = json.dumps(config, indent=2, ensure_ascii=False, default=str)
    return f"<pre>{esc(text)}</pre>"


def value_html(value: object, depth: int = 0) -> str:
    """Any JSON-like value as HTML: dicts as key/value tables, lists of dicts as tables.

    Why generic: the data report and the strategy scores are other modules' dicts; the
    report shows whatever they hold without knowing their shape, long lists truncated.
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_number(value):
        return _num(value)
    if isinstance(value, str | PurePath):
        return esc(value)
    if depth >= MAX_DEPTH:
        return f"<code>{esc(json.dumps(value, ensure_ascii=False, default=str))}</code>"
    if isinstance(value, Mapping):
        rows = "".join(
            f"<tr><th>{esc(k)}</th><td>{value_html(v, depth + 1)}</td></tr>"
            for k, v in value.items()
        )
        return f'<table class="kv">{rows}</table>' if rows else "—"
    if isinstance(value, Sequence | set | frozenset | np.ndarray):
        return _list_html(list(value), depth)
    return esc(value)


def _list_html(items: list, depth: int) -> str:
    if not items:
        return "—"
    more = len(items) - (
        MAX_TABLE_ROWS if all(isinstance(i, Mapping) for i in items) else MAX_LIST_ITEMS
    )
    tail = f'<p class="note">… and {more:,} more</p>' if more > 0 else ""
    if all(isinstance(i, Mapping) for i in items):
        keys = list(dict.fromkeys(k for i in items for k in i))
        head = "".join(f"<th>{esc(k)}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td>{value_html(i.get(k), depth + 1)}</td>" for k in keys) + "</tr>"
            for i in items[:MAX_TABLE_ROWS]
        )
        return (
            f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{tail}'
        )
    shown = items[:MAX_LIST_ITEMS]
    if all(not isinstance(i, Mapping | list | tuple) for i in shown):
        return ", ".join(value_html(i, depth + 1) for i in shown) + tail
    return "<ul>" + "".join(f"<li>{value_html(i, depth + 1)}</li>" for i in shown) + "</ul>" + tail


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _num(value: object) -> str:
    if not _is_number(value) or (
        isinstance(value, float | np.floating) and not math.isfinite(value)
    ):
        return "—" if value is None or _is_number(value) else esc(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return f"{float(value):.4g}"


def _pct(value: object) -> str:
    return f"{float(value):.1%}" if _is_number(value) and math.isfinite(float(value)) else "—"


def _duration(seconds: object) -> str:
    if not _is_number(seconds) or not math.isfinite(float(seconds)):
        return "—"
    return human_duration(float(seconds))


# ----------------------------------------------------------- confusion cells, doctor
def cell_anchor(true: int, pred: int) -> str:
    """The id of the gallery of the images of true class ``true`` predicted ``pred``."""
    return f"cell-{true}-{pred}"


def confusion_links_table(metrics: Metrics, linked: set[tuple[int, int]]) -> str:
    """The confusion matrix as counts; an off-diagonal cell with images behind it is a
    link to their gallery (plain anchors: the page runs no script)."""
    cm = np.asarray(metrics.confusion)
    names = metrics.classes
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{esc(c)}</th>" for c in names)
    rows = []
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            n = int(cm[i, j])
            text = f"{n:,}"
            if (i, j) in linked:
                text = f'<a href="#{cell_anchor(i, j)}">{text}</a>'
            cells.append(f"<td class=num>{text}</td>")
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return (
        '<p class="note">Counts; a wrong cell\'s number opens the images behind it.</p>'
        f'<table class="grid" id="confusion-table"><thead>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def cells_section(cells: Sequence[Mapping]) -> str:
    """One gallery per wrong confusion cell, each reachable from the matrix."""
    parts = []
    for cell in cells:
        figures = [
            figure_html(
                m.get("image"),
                f"true {cell['true']}, predicted {cell['pred']}",
                f'{_pct(m.get("confidence"))}<br><span class="path">{esc(m.get("path"))}</span>',
            )
            for m in cell["images"]
        ]
        more = cell["count"] - len(cell["images"])
        note = f'<p class="note">and {more:,} more</p>' if more > 0 else ""
        parts.append(
            f'<div id="{cell_anchor(cell["i"], cell["j"])}"><h3>true {esc(cell["true"])}, '
            f"predicted {esc(cell['pred'])} ({cell['count']:,})</h3>"
            f'<div class="mistakes">{"".join(figures)}</div>{note}</div>'
        )
    return "\n".join(parts)


def doctor_section(doctor: Mapping) -> str:
    """The data doctor's findings: suspected mislabels (given and suggested label),
    leak groups and outliers, as thumbnails."""
    source = doctor.get("source")
    intro = (
        "Leaks found by the fit's check (copies shared across splits). "
        "<code>transferkit doctor DATA --run RUN</code> adds every finding here."
        if source == "fit"
        else "Findings of <code>transferkit doctor</code>; nothing was moved or deleted."
    )
    parts = [f'<p class="note">{intro}</p>']
    suspects = doctor.get("suspects") or []
    if source != "fit":
        parts.append(f"<h3>Suspected mislabels ({doctor.get('n_suspects', len(suspects)):,})</h3>")
        parts.append(_grid(suspects, _suspect_caption) if suspects else "<p>None.</p>")
    leaks = doctor.get("leaks") or []
    parts.append(f'<h3 id="doctor-leaks">Leaks ({len(leaks):,})</h3>')
    if not leaks:
        parts.append('<p class="callout ok">No image is shared between splits.</p>')
    for g in leaks:
        parts.append(
            f'<p class="callout warn">{esc(g["kind"])} copies across splits: a test or '
            "validation copy of a training image inflates the score</p>"
            + _grid(g["members"], lambda m: f"{esc(m['split'])}<br>{_path(m)}")
        )
    outliers = doctor.get("outliers") or []
    if source != "fit":
        parts.append(f"<h3>Outliers ({len(outliers):,})</h3>")
        parts.append(_grid(outliers, _outlier_caption) if outliers else "<p>None.</p>")
    return "\n".join(parts)


def _grid(rows: Sequence[Mapping], caption) -> str:
    figures = [figure_html(r.get("image"), str(r.get("path")), caption(r)) for r in rows]
    return f'<div class="mistakes">{"".join(figures)}</div>'


def _path(row: Mapping) -> str:
    return f'<span class="path">{esc(row.get("path"))}</span>'


def _suspect_caption(r: Mapping) -> str:
    return (
        f"given <b>{esc(r.get('given'))}</b><br>looks like <b>{esc(r.get('suggested'))}</b> "
        f"({_num(r.get('score'))})<br>{_path(r)}"
    )


def _outlier_caption(r: Mapping) -> str:
    return f"nearest <b>{esc(r.get('nearest_class'))}</b> ({_num(r.get('score'))})<br>{_path(r)}"
