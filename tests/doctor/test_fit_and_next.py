"""``fit`` warns about and records leaks; ``transferkit next`` ranks unlabelled images."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
from doctor_data import plant
from PIL import Image

from helpers import FAST_FIT, red_image
from transferkit.cli import main
from transferkit.doctor.active import pick


def test_fit_warns_one_line_per_leak_group_and_records_them(tmp_path, caplog):
    from transferkit.estimator import TransferClassifier

    data = plant(tmp_path / "data")
    with Image.open(data / "train" / "blue" / "img2.png") as img:
        img.resize((32, 32), Image.Resampling.BICUBIC).save(data / "test" / "blue" / "big.png")
    run = tmp_path / "run"
    clf = TransferClassifier(
        "test_resnet", "feature-extract", weights="none", cache_dir=str(tmp_path / "c"), **FAST_FIT
    )
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        clf.fit(data, run_dir=run)
    leaks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("leak:")]
    # the exact copy and two bicubic enlargements (by thumbnails:
    # the fit has no features yet)
    assert len(leaks) == 3
    assert any("train/green/img0.png (train), test/green/copy.png (test)" in m for m in leaks)
    assert any("near copies" in m and "test/blue/big.png (test)" in m for m in leaks)
    assert any("near copies" in m and "test/red/resized.png (test)" in m for m in leaks)
    record = json.loads((run / "doctor.json").read_text())
    assert record["source"] == "fit" and len(record["leaks"]) == 3
    assert all(g["leak"] for g in record["leaks"])


def test_next_ranks_uncertain_images_first_and_lists_k(trained, tmp_path, capsys):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        shutil.copy(next((trained.data / "train" / "red").glob("*.png")), folder / name)
    red_image(folder / "d.png", seed=3)
    (folder / "broken.png").write_bytes(b"not an image")
    cache = ["--cache-dir", str(tmp_path / "features")]
    assert main(["next", str(trained.run), str(folder), "--k", "2", "--json", *cache]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["considered"] == 4 and len(out["next"]) == 2
    assert out["extracted"] == 2  # a, b and c are one picture: one row in the cache
    # the probabilities from cached features are the run's own (a fine-tuned base)
    from transferkit.predict import load_predictor

    predicted = load_predictor(trained.run).predict([r["path"] for r in out["next"]]).predictions
    for row, p in zip(out["next"], predicted, strict=True):
        assert row["predicted"] == p.label
        assert abs(row["probability"] - p.confidence) < 1e-3
    # asked again: every feature comes from the cache, the same ranking
    assert main(["next", str(trained.run), str(folder), "--k", "2", "--json", *cache]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["extracted"] == 0 and again["next"] == out["next"]
    assert [r["rank"] for r in out["next"]] == [1, 2]
    assert out["unreadable"][0]["path"].endswith("broken.png")
    # three copies of one picture: diversity picks at most one of them
    picked = {r["path"].rsplit("/", 1)[-1] for r in out["next"]}
    assert len(picked & {"a.png", "b.png", "c.png"}) <= 1
    assert main(["next", str(trained.run), str(folder), "--k", "0"]) == 2
    assert "--k must be a positive integer, got 0" in capsys.readouterr().err


def test_pick_prefers_uncertain_images_but_not_twice_the_same_one():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    uncertainty = np.array([0.9, 0.9, 0.5])
    assert [i for i, _ in pick(features, uncertainty, 2)] == [0, 2]


def test_no_leak_check_skips_it_and_the_run_says_so(tmp_path, caplog):
    from transferkit.cli import build_parser, fit_config_from_args
    from transferkit.estimator import TransferClassifier

    args = build_parser().parse_args(["fit", "d", "--out", "r", "--no-leak-check"])
    assert fit_config_from_args(args).leak_check is False
    data = plant(tmp_path / "data")
    run = tmp_path / "run"
    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        cache_dir=str(tmp_path / "c"),
        leak_check=False,
        **FAST_FIT,
    )
    with caplog.at_level(logging.WARNING, logger="transferkit"):
        clf.fit(data, run_dir=run)
    assert not [r for r in caplog.records if r.getMessage().startswith("leak:")]
    record = json.loads((run / "doctor.json").read_text())
    assert record["leak_check"] is False and record["leaks"] == []
