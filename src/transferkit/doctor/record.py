"""``RUN/doctor.json``: the doctor's findings a run's report shows.

``fit`` writes it with the leak groups of its data (``{"source": "fit", "data",
"leaks"}``); ``doctor DATA --run RUN`` replaces it with every finding (``"source":
"doctor"`` plus the ``--json`` fields) and rebuilds the report.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import InputError
from ..run_files import CONFIG, to_json
from ..run_files import DOCTOR as DOCTOR_FILE


def fit_record(data_root: str, leaks: list[dict] | None) -> dict:
    """What ``fit`` records: its leak groups; ``leaks=None``: the check was turned
    off (``--no-leak-check``), said as ``"leak_check": false``, not as no leaks."""
    return {
        "source": "fit",
        "data": data_root,
        "leaks": leaks or [],
        "leak_check": leaks is not None,
    }


def write_record(run_dir, record: dict) -> Path:
    path = Path(run_dir) / DOCTOR_FILE
    atomic_write_text(path, to_json(record))
    return path


def check_run(run_dir) -> Path:
    """``run_dir`` if it holds a finished run, else a one-line refusal."""
    run = Path(run_dir)
    if not (run / CONFIG).is_file():
        raise InputError(
            f"--run {str(run)!r} is not a finished run (no {CONFIG}); give a fit's --out folder"
        )
    return run


def record_in_run(run_dir, report) -> Path:
    """Write ``report`` into the run's doctor.json and rebuild its report.html."""
    run = check_run(run_dir)
    record = {"source": "doctor", **report.to_dict(), "leaks": report.leaks}
    path = write_record(run, record)
    from ..reports import write_run_report

    write_run_report(run)
    return path
