"""The advisor's measuring pass: image size from the data, scores at every cut."""

from __future__ import annotations

from helpers import make_image_folder
from transferkit.advisor import measure_splits, suggest_image_size
from transferkit.backbones import create_backbone
from transferkit.data import load_data


def test_suggested_image_size(tmp_path):
    small = make_image_folder(tmp_path / "s", per_class=2, size=28)
    assert suggest_image_size(load_data(small).train, 224)[0] == 96
    big = make_image_folder(tmp_path / "b", per_class=2, size=64)
    assert suggest_image_size(load_data(big).train, 224)[0] == 224


def test_one_pass_scores_every_cut_and_measures_batchnorm(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=4, size=16)
    bb = create_backbone("test_efficientnet", weights="none")
    m = measure_splits(bb, load_data(data), image_size=32)
    assert list(m.features) == list(m.scores) == bb.cut_points
    assert all(f.shape[0] == len(m.examples) for f in m.features.values())
    for s in m.scores.values():
        assert 0.0 <= s.linear_probe_accuracy <= 1.0 and 0.0 <= s.knn_accuracy <= 1.0
    assert 0.0 < m.bn.overall <= 1.0 and set(m.bn_per_cut) == set(bb.cut_points)
