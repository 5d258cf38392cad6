"""The summary tables bench/gpu_check.sh prints: one row per backbone from the
throughput_*.json and photos_*.json in a folder (a missing file is a dash).

    python bench/_gpu_summary.py FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BACKBONES = ("efficientnet_lite0", "resnet50")


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _get(d: dict | None, *keys, fmt: str = "{}"):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return "-"
        d = d[k]
    return fmt.format(d)


def throughput_rows(folder: Path) -> list[str]:
    rows = [
        "| backbone | loader img/s | bare forward img/s | extraction img/s | extraction / bare |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in BACKBONES:
        r = _load(folder, f"throughput_{name}")
        loader = (
            "-" if r is None else ", ".join(f"{v:,.0f}" for v in r["loader_images_per_s"].values())
        )
        rows.append(
            f"| {name} | {loader} | {_get(r, 'bare_forward_images_per_s', fmt='{:,.0f}')} "
            f"| {_get(r, 'pipeline_images_per_s', fmt='{:,.0f}')} "
            f"| {_get(r, 'pipeline_over_bare_forward')} |"
        )
    return rows


def photos_rows(folder: Path) -> list[str]:
    rows = [
        "| backbone | scan img/s | loader img/s (1st, 2nd pass) | pipeline / bare img/s "
        "| pipeline / bare | fine-tune epoch 1 / later s | epoch 1 / later | top-1 agreement "
        "| peak RSS MiB | evaluation input path |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in BACKBONES:
        r = _load(folder, f"photos_{name}")
        peak = "-" if r is None else f"{max(r['peak_rss_mib'].values()):,.0f}"
        rows.append(
            f"| {name} | {_get(r, 'scan', 'cold_images_per_s')} "
            f"| {_get(r, 'loader', 'first_pass_images_per_s')}, "
            f"{_get(r, 'loader', 'second_pass_images_per_s')} "
            f"| {_get(r, 'pipeline', 'pipeline_images_per_s')} / "
            f"{_get(r, 'pipeline', 'bare_forward_images_per_s')} "
            f"| {_get(r, 'pipeline', 'pipeline_over_bare_forward')} "
            f"| {_get(r, 'fine_tune', 'first_epoch_seconds')} / "
            f"{_get(r, 'fine_tune', 'later_epochs_median_seconds')} "
            f"| {_get(r, 'fine_tune', 'first_over_later_epochs')} "
            f"| {_get(r, 'predict', 'top1_agreement')} | {peak} | {input_path(r)} |"
        )
    return rows


def input_path(result: dict | None) -> str:
    """How the pipeline's evaluation batches were made: the measured choice between
    nvJPEG on the GPU and the CPU loader (data/gpu.py), with both speeds."""
    pipeline = (result or {}).get("pipeline") or {}
    if pipeline.get("gpu_jpeg_decode") is False:
        return "CPU loader (GPU decoding failed: see gpu_check.log)"
    choices = pipeline.get("decode_choices") or []
    if not choices:
        return "CPU loader" if result else "-"
    c = choices[0]
    where = "nvJPEG" if c["on_device"] else "CPU loader"
    workers = max(1, c["workers"])
    return (
        f"{where} ({c['device_images_per_s']:,.0f} vs {c['cpu_images_per_s']:,.0f} img/s "
        f"with {workers} worker{'' if workers == 1 else 's'})"
    )


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    print("Throughput (bench/throughput.py, Fashion-MNIST PNGs):\n")
    print("\n".join(throughput_rows(folder)))
    print("\nPhotos (bench/photos.py, synthetic 12 MP JPEGs):\n")
    print("\n".join(photos_rows(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
