"""A saved run predicts its photos (from the original files) exactly as it evaluated
them during the fit (through the working copies its scan made)."""

from __future__ import annotations

import pytest

from helpers import FAST_FIT
from test_photos_copies import photo
from transferkit.estimator import TransferClassifier
from transferkit.predict import load_predictor
from transferkit.run_files import read_predictions


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "cache"))


def test_predictions_on_the_original_files_match_the_runs_own(tmp_path):
    for c, shift in (("light", 60), ("dark", -60)):
        for i in range(5):
            photo(tmp_path / "data" / c / f"{i}.jpg", size=(640, 480), seed=i * 3 + shift % 7)
    run = tmp_path / "run"
    clf = TransferClassifier(
        "test_resnet",
        "fine-tune",
        cache_dir=str(tmp_path / "features"),
        **dict(FAST_FIT, weights="none", image_size=32, val_split=0.4, seed=0),
    )
    clf.fit(tmp_path / "data", run_dir=run)
    recorded = {r["path"]: r for r in read_predictions(run)}
    assert len(recorded) >= 4
    result = load_predictor(run).predict(sorted(recorded), top_k=2)
    assert not result.failures
    for p in result.predictions:
        row = recorded[p.path]
        assert p.label == row["prediction"], p.path
        probs = dict(p.top_k)
        assert probs[p.label] == pytest.approx(row["confidence"], abs=1e-5), p.path
