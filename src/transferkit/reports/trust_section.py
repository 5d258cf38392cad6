"""The report's "How far to trust it" section: calibration (a reliability diagram),
what the prediction sets cost (coverage against mean set size), the unknown-image
threshold, and the validation images the model was least sure of.

:func:`trust_section` is pure: it takes the run's stored trust data (``trust.json``
as a dict), the evaluated prediction rows and the uncertain images, and returns the
HTML. ``run_report.run_trust_section`` reads them from a run directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .metrics import rescale
from .plots import plot_reliability
from .sections import esc, figure_html, img_tag
from .trust_plots import plot_coverage_curve

COVERAGE_TARGETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
UNCERTAIN_IMAGES = 8


def coverage_curve(held_out: Sequence[float], probs, labels, targets=COVERAGE_TARGETS) -> list:
    """Per coverage asked for, the achieved coverage and mean set size of the sets on
    the evaluated images (quantiles from the held-out scores; targets the held-out
    images are too few for are left out)."""
    from ..trust.conformal import conformal_quantile, set_metrics

    curve = []
    for target in targets:
        q = conformal_quantile(held_out, target)
        if np.isfinite(q) and len(labels):
            curve.append({"target": target, **set_metrics(probs, labels, q)})
    return curve


def uncertain_rows(
    rows: Sequence[Mapping], classes: Sequence[str], quantile, limit=UNCERTAIN_IMAGES
):
    """The validation rows the model was least sure of: largest prediction set first,
    then lowest confidence; each with its ``set`` (class names) and ``confidence``."""
    from ..trust.conformal import prediction_sets

    val = [r for r in rows if r.get("split") == "val"]
    if not val:
        return []
    probs = np.array([r["probs"] for r in val], dtype=float)
    q = quantile if quantile is not None else np.inf
    sets = prediction_sets(probs, q)
    ranked = sorted(range(len(val)), key=lambda i: (-len(sets[i]), probs[i].max()))
    return [
        {
            "path": val[i].get("path"),
            "true": val[i].get("label"),
            "set": [classes[j] for j in sets[i]],
            "confidence": float(probs[i].max()),
        }
        for i in ranked[:limit]
    ]


def trust_section(
    trust: Mapping | None,
    probabilities,
    labels,
    temperature: float,
    uncertain: Sequence[Mapping] = (),
    split: str = "test",
    reliability: bool = True,
) -> str:
    """The section's HTML. ``trust``: the run's ``trust.json`` (None: a run from
    before it, said so); ``probabilities``/``labels``: the evaluated images' calibrated
    probabilities and class indices; ``uncertain``: from :func:`uncertain_rows`, each
    with an ``image`` (PIL) when it could be opened; ``reliability=False`` leaves out
    the reliability diagram (the report shows it once, with the calibration numbers)."""
    probs = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels, dtype=np.int64)
    parts = []
    if len(labels) and reliability:
        before = rescale(probs, 1 / temperature)
        figure = plot_reliability(before, probs, labels)
        parts.append(f"<h3>Calibration ({esc(split)} images)</h3>")
        parts.append(img_tag(figure, "reliability diagram before and after calibration"))
    if trust is None:
        parts.append(
            '<p class="callout info">This run was fitted before transferkit recorded OOD '
            "scores and prediction sets: fit it again for them.</p>"
        )
        return "\n".join(parts)
    parts.append(_settings_html(trust))
    curve = coverage_curve(trust.get("conformal_held_out") or [], probs, labels)
    if curve:
        parts.append(f"<h3>Prediction sets ({esc(split)} images)</h3>")
        parts.append(
            img_tag(plot_coverage_curve(curve, trust.get("coverage")), "coverage against set size")
        )
    if uncertain:
        parts.append("<h3>The validation images it was least sure of</h3>")
        parts.append(_uncertain_html(uncertain))
    return "\n".join(parts)


def _settings_html(trust: Mapping) -> str:
    from ..trust.state import trust_from_json

    state = trust_from_json(dict(trust))
    threshold, quantile = state.threshold, state.quantile
    lines = [
        f"An image is marked <b>unknown</b> when its {esc(state.method)} OOD score is above "
        f"{_num(threshold)}, chosen on {len(state.ood_held_out)} {esc(state.source)} images "
        f"so that about {state.unknown_rate:.0%} of images like the training ones are.",
        f"Prediction sets hold every class with a probability of at least "
        f"{_num(None if quantile is None else 1 - quantile)}: on images exchangeable with the "
        f"{len(state.conformal_held_out)} held-out ones, at least {state.coverage:.0%} of sets "
        "hold the true class (on average over images, not for each one)."
        + (
            " Only roughly here: the held-out scores are the cross-validation's out-of-fold"
            " ones, and the cross-validation that chose the head makes them optimistic; the"
            " curve below shows what the evaluated images got."
            if state.source == "out-of-fold"
            else ""
        ),
    ]
    lines += [esc(n) for n in state.notes()]
    return "".join(f'<p class="callout info">{line}</p>' for line in lines)


def _uncertain_html(uncertain: Sequence[Mapping]) -> str:
    cells = []
    for u in uncertain:
        alt = f"true {u.get('true')}, could be {' or '.join(u.get('set', []))}"
        caption = (
            f"true <b>{esc(u.get('true'))}</b><br>"
            f"set <b>{esc(' or '.join(u.get('set', [])))}</b> ({u.get('confidence', 0):.0%})"
        )
        if u.get("path") is not None:
            caption += f'<br><span class="path">{esc(u["path"])}</span>'
        cells.append(figure_html(u.get("image"), alt, caption))
    return f'<div class="mistakes">{"".join(cells)}</div>'


def _num(value) -> str:
    return (
        "n/a (too few held-out images)"
        if value is None or not np.isfinite(value)
        else f"{value:.4g}"
    )
