"""bench/photos.py and bench/gpu_check.sh: the photo benchmark runs end to end on a
few small JPEGs and reports every measure with its unit; its synthetic photos are
phone-sized JPEGs, reused when a folder already holds them; the GPU check refuses
clearly on a machine without a GPU."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture
def bench(monkeypatch):
    """bench/ on the import path, as when its scripts run."""
    monkeypatch.syspath_prepend(str(BENCH))
    return lambda name: importlib.import_module(name)


def _env() -> dict:
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


# ------------------------------------------------------------------ photos.py

STAGE_KEYS = {
    "scan": {"files", "usable_images", "cold_seconds", "cold_images_per_s", "warm_images_per_s"},
    "loader": {
        "images",
        "workers",
        "decoded_on",
        "first_pass_images_per_s",
        "second_pass_images_per_s",
    },
    "pipeline": {
        "images",
        "input_size",
        "pipeline_images_per_s",
        "bare_forward_images_per_s",
        "bare_forward_runs_images_per_s",
        "pipeline_runs_images_per_s",
        "gpu_jpeg_decode",
        "decode_choices",
        "pipeline_over_bare_forward",
    },
    "fine_tune": {
        "train_images",
        "val_images",
        "epoch_seconds",
        "first_epoch_seconds",
        "later_epochs_median_seconds",
        "first_over_later_epochs",
        "fit_seconds_total",
        "command_seconds",
    },
    "predict": {"val_images", "predicted", "top1_agreement", "max_confidence_difference"},
}


@pytest.mark.slow
def test_the_photo_benchmark_reports_every_measure_on_a_few_small_jpegs(tmp_path):
    out = tmp_path / "photos.json"
    cmd = [sys.executable, str(BENCH / "photos.py"), "--images", "8", "--photo-size", "320x240"]
    cmd += ["--image-size", "32", "--backbone", "test_efficientnet", "--weights", "none"]
    cmd += ["--batch-size", "4", "--fine-tune-epochs", "2", "--no-scaling"]
    cmd += ["--folder", str(tmp_path / "photos"), "--out", str(out)]
    cmd += ["--reference", str(ROOT)]  # this code against itself: the machinery runs
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    for stage, keys in STAGE_KEYS.items():
        assert keys <= set(result[stage]), (stage, keys - set(result[stage]))
        assert result[stage]["peak_rss_mib"] > 0
    assert result["scan"]["files"] == result["scan"]["usable_images"] == 8
    assert result["loader"]["images"] == result["pipeline"]["images"] == 8
    assert result["pipeline"]["input_size"] == [3, 32, 32]
    assert len(result["fine_tune"]["epoch_seconds"]) == 2
    assert result["predict"]["predicted"] == result["predict"]["val_images"] > 0
    assert 0 <= result["predict"]["top1_agreement"] <= 1
    assert set(result["peak_rss_mib"]) == {"scan", "loader", "pipeline", "fit", "predict"}
    assert result["memory_scaling"]["statement"] == "not measured (--no-scaling)"
    assert set(result["targets"]) == {
        "pipeline_over_bare_forward",
        "fine_tune_first_over_later_epochs",
        "predict_top1_agreement",
        "scan_speedup_over_baseline",
        "scan_over_full_decode_same_run",
        "scan_speedup_over_reference_same_run",
    }
    assert result["scan"]["full_decode_images_per_s"] > 0 < result["scan"]["cold_over_full_decode"]
    floor = result["scan"]["decode_floor"]
    assert floor["files"] == 8 and floor["full_over_reduced"] > 0
    assert all(floor[k] > 0 for k in ("full_decode_ms", "reduced_decode_ms", "scan_check_ms"))
    fine = result["fine_tune"]
    assert len(fine["epoch_input_seconds"]) == 2
    waits = zip(fine["epoch_input_seconds"], fine["epoch_seconds"], strict=True)
    assert all(0 < w <= e for w, e in waits)
    ref = result["same_run_reference"]
    assert [len(v) for v in ref["scan_images_per_s"].values()] == [2, 2]
    assert ref["scan_speedup"] > 0 and len(ref["reference_epoch_seconds"]) == 2
    assert result["targets"]["scan_speedup_over_reference_same_run"]["value"] == ref["scan_speedup"]
    assert result["photos"]["images"] == 8 and result["photos"]["exif_rotated"] == 2
    assert not list(Path(result["photos"]["folder"]).glob("*/*.tmp"))


def test_memory_scaling_carries_the_line_through_two_sizes_to_ten_thousand_files(bench):
    photos = bench("photos")
    full = {"scan": {"peak_rss_mib": 900.0}, "loader": {"peak_rss_mib": 1000.0}}
    half = {"scan": {"peak_rss_mib": 900.0}, "loader": {"peak_rss_mib": 990.0}}
    scaling = photos.memory_scaling(full, half, 100, 50)
    assert scaling["scan"]["mib_per_1000_files"] == 0
    assert scaling["loader"]["mib_per_1000_files"] == 200
    assert scaling["loader"]["projected_10000_files_mib"] == 1000 + 0.2 * 9900
    statement = photos._scaling_statement(scaling, 8)
    assert statement.startswith("peak RSS per 1,000 more files (MiB): scan +0.0, loader +200.0")
    assert "between 50 and 100 files at batch 8" in statement
    assert statement.endswith("a straight line gives at most 2,980 MiB at 10,000 files")


def test_the_scan_speed_up_is_measured_against_a_baseline_json(bench):
    photos = bench("photos")
    result = {
        "scan": {"cold_images_per_s": 45.0},
        "pipeline": {"pipeline_over_bare_forward": 0.85},
        "fine_tune": {"first_over_later_epochs": None},
        "predict": {"top1_agreement": 1.0},
    }
    targets = photos._targets(result, {"scan": {"cold_images_per_s": 15.0}})
    assert targets["scan_speedup_over_baseline"] == {"value": 3.0, "target": ">= 3.0", "met": True}
    assert targets["fine_tune_first_over_later_epochs"]["met"] is None
    assert photos._targets(result, None)["scan_speedup_over_baseline"]["value"] is None
    result["scan"]["cold_over_full_decode"] = 2.5  # the same-run ratio has its own target
    same_run = photos._targets(result, None)["scan_over_full_decode_same_run"]
    assert same_run == {"value": 2.5, "target": ">= 3.0", "met": False}


# ------------------------------------------------------------- synthetic photos


def test_a_synthetic_12_mp_photo_is_a_phone_sized_jpeg(bench, tmp_path):
    data = bench("_photos_data")
    size = data.write_photo(tmp_path, 0, (4032, 3024), 90, 0)
    assert 3_000_000 <= size <= 5_000_000
    with Image.open(data.photo_path(tmp_path, 0)) as img:
        assert (img.format, img.size) == ("JPEG", (4032, 3024))


def test_every_fourth_photo_is_stored_sideways_with_its_exif_orientation(bench, tmp_path):
    data = bench("_photos_data")
    data.write_photo(tmp_path, 3, (64, 48), 90, 0)
    with Image.open(data.photo_path(tmp_path, 3)) as img:
        assert img.size == (48, 64) and img.getexif()[0x0112] == 6


def test_a_folder_of_the_right_photos_is_reused_and_one_of_others_rewritten(bench, tmp_path):
    data = bench("_photos_data")
    first = data.ensure_photos(tmp_path, 8, (64, 48), 90)
    assert first["written_now"] and len(first["bytes"]) == 8
    assert not data.ensure_photos(tmp_path, 8, (64, 48), 90)["written_now"]
    data.photo_path(tmp_path / "photos", 5).unlink()  # a file gone: written again
    assert data.ensure_photos(tmp_path, 8, (64, 48), 90)["written_now"]
    other = data.ensure_photos(tmp_path, 4, (64, 48), 80)  # other settings: replaced
    assert other["written_now"] and len(list((tmp_path / "photos").glob("*/*.jpg"))) == 4


# -------------------------------------------------------------- gpu_check.sh


def test_the_gpu_check_script_parses():
    bash = shutil.which("bash")
    assert bash and subprocess.run([bash, "-n", str(BENCH / "gpu_check.sh")]).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_gpu_check_stops_with_a_clear_message_without_a_gpu(tmp_path):
    env = {**_env(), "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("gpu_check: no CUDA GPU is visible to PyTorch")
    assert "run this on a machine with an NVIDIA GPU" in proc.stderr
    assert not (tmp_path / "out").exists()  # stopped before anything was written


def test_the_gpu_check_names_an_unknown_argument():
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--bogus"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "gpu_check: unknown argument '--bogus' (see --help)"


def _wheel(folder, name: str, code: str):
    """A minimal pure-Python wheel holding module ``name``."""
    import zipfile

    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}.py": code,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{dist}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as z:
        for f, text in files.items():
            z.writestr(f, text)


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode,
    reason="this interpreter has no pip",
)
def test_the_gpu_check_installs_a_missing_package_with_what_it_needs(tmp_path):
    """A package missing on the GPU machine comes from --wheels, and so do the
    packages its import then asks for; one whose needs have no wheel is named."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "tkneeds_a", "import tkneeds_b\n")
    env = {**_env(), "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    env["GPU_CHECK_DEPS"] = "numpy:numpy tkneeds_a:tkneeds-a"
    run = lambda: subprocess.run(  # noqa: E731
        ["bash", str(BENCH / "gpu_check.sh"), "--deps-only", "--wheels", str(wheels)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    proc = run()
    assert proc.returncode == 1
    assert "missing Python packages: tkneeds-a;" in proc.stderr
    log = (tmp_path / "out" / "gpu_check_deps.log").read_text()
    assert "No module named 'tkneeds_b'" in log
    _wheel(wheels, "tkneeds_b", "VALUE = 1\n")
    proc = run()
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "out" / "gpu_check_deps.log").read_text()
    assert "installed tkneeds_b from" in log and "needed by tkneeds-a" in log
    assert "every package imports" in log


def test_epochs_and_scan_are_compared_with_a_baseline_run(bench):
    photos = bench("photos")
    result = {
        "scan": {"cold_images_per_s": 30.0},
        "fine_tune": {"first_epoch_seconds": 4.0, "later_epochs_median_seconds": 3.0},
    }
    baseline = {
        "transferkit_commit": "abc1234",
        "scan": {"cold_images_per_s": 7.5},
        "fine_tune": {"first_epoch_seconds": 44.0, "later_epochs_median_seconds": 33.0},
    }
    assert photos.against_baseline(result, baseline) == {
        "baseline_commit": "abc1234",
        "scan_cold": 4.0,
        "fine_tune_first_epoch": 11.0,
        "fine_tune_later_epochs": 11.0,
    }


def test_the_gpu_summary_says_which_input_path_fed_the_model(bench):
    summary = bench("_gpu_summary")
    chosen = {"on_device": True, "device_images_per_s": 5210.4, "cpu_images_per_s": 1630.0}
    ran = {"pipeline": {"gpu_jpeg_decode": True, "decode_choices": [{**chosen, "workers": 8}]}}
    assert summary.input_path(ran) == "nvJPEG (5,210 vs 1,630 img/s with 8 workers)"
    lost = {**chosen, "on_device": False, "workers": 0}
    ran = {"pipeline": {"gpu_jpeg_decode": True, "decode_choices": [lost]}}
    assert summary.input_path(ran) == "CPU loader (5,210 vs 1,630 img/s with 1 worker)"
    failed = {"pipeline": {"gpu_jpeg_decode": False, "decode_choices": []}}
    assert summary.input_path(failed).startswith("CPU loader (GPU decoding failed")
    assert summary.input_path({"pipeline": {"gpu_jpeg_decode": None}}) == "CPU loader"
    assert summary.input_path(None) == "-"


def test_the_jpeg_structure_bench_counts_what_the_walk_vouched_for(bench, capsys):
    jpeg = bench("jpeg_structure")
    assert jpeg.main(["--count", "60", "--seed", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["damaged_files"] == 60 and result["vouched_but_refused"] == []
    assert result["sources_not_vouched_for"] == []
    assert 0 < result["vouched_for"] < 60 and 0 < result["refused_by_full_decode"] < 60
    assert result["timing_per_file"]["walk_ms"] < result["timing_per_file"]["full_decode_ms"]
