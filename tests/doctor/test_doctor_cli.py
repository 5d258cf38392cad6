"""``transferkit doctor``: each finding through the command line, the text table,
the relabelling sheet and one-line refusals."""

from __future__ import annotations

import csv
import json

from doctor_data import TINY

from transferkit.cli import main
from transferkit.data import load_data


def test_the_mislabelled_image_is_the_top_suspect_with_the_label_it_looks_like(findings):
    top = findings["suspected_mislabels"][0]
    assert top["path"] == "train/blue/wrong.png"
    assert (top["given"], top["suggested"]) == ("blue", "red")
    assert 0 < top["score"] <= 1
    scores = [m["score"] for m in findings["suspected_mislabels"]]
    assert scores == sorted(scores, reverse=True)


def test_exact_and_near_copies_are_grouped_and_cross_split_groups_are_leaks(findings):
    groups = {tuple(g["paths"]): g for g in findings["duplicate_groups"]}
    exact = groups[("train/green/img0.png", "test/green/copy.png")]
    assert exact["kind"] == "exact" and exact["leak"] and exact["splits"] == ["train", "test"]
    assert exact["dropped"] == ["test/green/copy.png"]  # loading leaves it out of the test
    near = groups[("train/red/img1.png", "test/red/resized.png")]
    assert near["kind"] == "near" and near["leak"]
    assert findings["summary"]["leaks"] == 2


def test_an_image_unlike_every_class_is_the_top_outlier_with_its_nearest_class(findings):
    top = findings["outliers"][0]
    assert top["path"] == "train/green/odd.png"
    assert top["nearest_class"] in ("red", "green", "blue") and top["score"] > 4


def test_classes_have_counts_per_split_and_a_difficulty(findings):
    blue = findings["classes"]["blue"]
    assert blue["counts"] == {"train": 7, "val": 2, "test": 3, "total": 12}
    assert 0 <= blue["difficulty"] <= 1 and 0 <= blue["confidence"] <= 1
    assert set(findings["classes"]) == {"red", "green", "blue"}


def test_clean_data_has_no_suspects_duplicates_or_leaks(data, capsys):
    assert main(["doctor", str(data), *TINY, "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert clean["duplicate_groups"] == []
    assert clean["summary"]["leaks"] == 0


def test_the_human_output_is_a_short_ranked_table(planted, capsys):
    assert main(["doctor", str(planted), *TINY]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = lines.index(next(x for x in lines if x.startswith("Suspected mislabels")))
    assert lines[at + 1].split() == ["score", "given", "suggested", "path"]
    assert lines[at + 2].split()[1:] == ["blue", "red", "train/blue/wrong.png"]
    assert "LEAK exact  train/green/img0.png (train), test/green/copy.png (test)" in out
    assert "Nothing was moved or deleted" in out


def test_the_relabelling_sheet_round_trips_through_the_csv_source(planted, tmp_path, capsys):
    sheet = tmp_path / "relabel.csv"
    assert main(["doctor", str(planted), *TINY, "--write-csv", str(sheet)]) == 0
    rows = list(csv.DictReader(sheet.open()))
    assert list(rows[0]) == ["path", "label", "split", "suggested", "reason"]
    wrong = next(r for r in rows if r["path"].endswith("wrong.png"))
    assert (wrong["label"], wrong["suggested"]) == ("blue", "red")
    assert "suspected mislabel" in wrong["reason"]
    from_folder, from_sheet = load_data(planted), load_data(sheet)
    assert from_sheet.classes == from_folder.classes
    for split in ("train", "val", "test"):
        a = sorted((e.digest, e.label) for e in getattr(from_folder, split))
        b = sorted((e.digest, e.label) for e in getattr(from_sheet, split))
        assert a == b, split
    # the user's edited sheet is never overwritten
    assert main(["doctor", str(planted), *TINY, "--write-csv", str(sheet)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_input_is_one_line_naming_the_option_and_value(planted, tmp_path, capsys):
    assert main(["doctor", str(planted), *TINY[:4], "--image-size", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("transferkit: error: --image-size must be >= 8") and err.count("\n") == 1
    assert main(["doctor", str(tmp_path / "missing"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("transferkit: error:") and "missing" in err and err.count("\n") == 1
    assert "Traceback" not in err
    assert main(["doctor", str(planted), *TINY, "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--run '{tmp_path}' is not a finished run" in err and err.count("\n") == 1
    assert main(["doctor", str(planted), *TINY, "--write-csv", str(tmp_path / "no" / "x.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
