"""Benchmark: does the JPEG marker walk ever vouch for a file a decoder refuses, and
how much faster than a decode is it?

Sources: scikit-image's sample photos (astronaut, coffee, chelsea, rocket, camera)
saved by Pillow as baseline, progressive, 4:4:4, restart-marker (per blocks, per
rows, progressive with restarts), EXIF-carrying, grayscale and CMYK JPEGs. Each of
``--count`` damaged files (seeded) is one source with one kind of damage: cut at a
random byte, 1/8/64 random bytes overwritten anywhere, 1/4 bytes overwritten in the
headers (before the first scan's data), a 4 KiB run zeroed, up to 5,000 bytes
dropped, up to 300 random bytes inserted, up to 64 bytes cut from the end, one byte
of any scan header changed (a progressive file has ten), or a whole header segment
copied, moved or dropped.

Each is judged three ways: a full Pillow decode, ``inspect_image`` (what ``data
check`` runs: the marker walk, and a 1/8-scale decode where the walk cannot vouch),
and the walk alone (``structure_problem``). The count that must be 0:
``vouched_but_refused`` (the walk vouched, the full decode refused). Also timed on
the sources: the walk against a full and a 1/8-scale decode, per file.

Run::

    python bench/jpeg_structure.py --count 6000 --seed 2 --out bench/results/jpeg_structure.json
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
import warnings
from collections import Counter

import numpy as np
from _common import command_line, emit, git_state
from PIL import Image

from transferkit.data.images import inspect_image
from transferkit.data.jpeg_structure import structure_problem

KINDS = (
    "cut",
    "flip1",
    "flip8",
    "flip64",
    "header1",
    "header4",
    "scan_header",
    "segment_copied",
    "segment_moved",
    "segment_dropped",
    "zero",
    "drop",
    "insert",
    "tail",
)


def segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, first byte, end) of each header segment, the 0xFF included; the
    image data after a scan header is skipped."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos + 1] != 0xD9:
        marker = data[pos + 1]
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        out.append((marker, pos, end))
        pos = end
        if marker == 0xDA:
            while data[pos] != 0xFF or data[pos + 1] == 0 or 0xD0 <= data[pos + 1] <= 0xD7:
                pos += 1
    return out


def sources() -> dict[str, bytes]:
    from skimage import data as samples

    def save(img: Image.Image, **kw) -> bytes:
        out = io.BytesIO()
        img.save(out, "JPEG", **kw)
        return out.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        img = Image.fromarray(getattr(samples, name)())
        out[f"{name} baseline"] = save(img, quality=90)
        out[f"{name} progressive"] = save(img, quality=90, progressive=True)
        out[f"{name} 4:4:4"] = save(img, quality=75, subsampling=0)
    coffee = Image.fromarray(samples.coffee())
    out["coffee restarts per 4 blocks"] = save(coffee, restart_marker_blocks=4)
    out["coffee restarts per 2 rows"] = save(coffee, restart_marker_rows=2)
    out["coffee progressive, restarts"] = save(coffee, progressive=True, restart_marker_rows=1)
    out["camera with EXIF"] = save(Image.fromarray(samples.camera()), exif=exif)
    out["astronaut grayscale"] = save(Image.fromarray(samples.astronaut()).convert("L"))
    out["astronaut CMYK"] = save(Image.fromarray(samples.astronaut()).convert("CMYK"))
    return out


def damage(data: bytes, kind: str, rng: random.Random) -> bytes:
    d, n = bytearray(data), len(data)
    header = data.find(b"\xff\xda") + 20
    if kind in ("cut", "tail"):
        return bytes(d[: rng.randrange(2, n) if kind == "cut" else -rng.randrange(1, 64)])
    if kind.startswith("flip"):
        for _ in range(int(kind[4:])):
            d[rng.randrange(n)] = rng.randrange(256)
    elif kind.startswith("header"):
        for _ in range(int(kind[6:])):
            d[rng.randrange(header)] = rng.randrange(256)
    elif kind == "scan_header" or kind.startswith("segment"):
        return segment_damage(data, kind, rng)
    elif kind == "zero":
        i = rng.randrange(n)
        d[i : i + 4096] = bytes(len(d[i : i + 4096]))
    elif kind == "drop":
        i = rng.randrange(n)
        del d[i : i + rng.randrange(1, 5000)]
    elif kind == "insert":
        i = rng.randrange(n)
        d[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    return bytes(d)


def segment_damage(data: bytes, kind: str, rng: random.Random) -> bytes:
    """One byte of any scan's header changed (a progressive file has many), or a
    whole header segment copied, moved or dropped (to before another segment)."""
    found = segments(data)
    d = bytearray(data)
    if kind == "scan_header":
        _, start, end = rng.choice([x for x in found if x[0] == 0xDA])
        d[rng.randrange(start + 4, end)] = rng.randrange(256)
        return bytes(d)
    _, start, end = rng.choice(found)
    seg = d[start:end]
    at = rng.choice([s for _, s, _ in found] + [len(d) - 2])
    if kind != "segment_copied":
        del d[start:end]
        at = at - (end - start) if at >= end else min(at, start)
    if kind != "segment_dropped":
        d[at:at] = seg
    return bytes(d)


def full_decode_ok(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img.convert("RGB")
        return True
    except Exception:
        return False


def per_file_ms(fn, datas: list[bytes], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for d in datas:
            fn(d)
        best = min(best, time.perf_counter() - start)
    return round(1000 * best / len(datas), 3)


def reduced_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.draft(img.mode, (1, 1))
        img.load()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=3000, help="damaged files to judge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")  # damaged EXIF blocks make Pillow warn on every file
    rng = random.Random(args.seed)
    srcs = sources()
    unvouched_sources = [k for k, v in srcs.items() if structure_problem(v) is not None]
    names = sorted(srcs)
    by_kind: dict[str, Counter] = {k: Counter() for k in KINDS}
    vouched_but_refused, scan_disagrees = [], 0
    for _ in range(args.count):
        kind, name = rng.choice(KINDS), rng.choice(names)
        data = damage(srcs[name], kind, rng)
        full = full_decode_ok(data)
        scan = inspect_image(data)[0].ok
        walk = structure_problem(data) is None
        by_kind[kind][f"decodes={full} vouched={walk}"] += 1
        scan_disagrees += scan != full
        if walk and not full:
            vouched_but_refused.append({"source": name, "damage": kind})
    datas = list(srcs.values())
    timing = {
        "files": len(datas),
        "mean_kib": round(float(np.mean([len(d) for d in datas])) / 1024, 1),
        "walk_ms": per_file_ms(structure_problem, datas),
        "reduced_decode_ms": per_file_ms(reduced_decode, datas),
        "full_decode_ms": per_file_ms(full_decode_ok, datas),
    }
    result = {
        "benchmark": "jpeg_structure",
        "transferkit_commit": git_state(),
        "command": command_line("bench/jpeg_structure.py", argv),
        "damaged_files": args.count,
        "seed": args.seed,
        "sources": names,
        "sources_not_vouched_for": unvouched_sources,
        "by_damage": {k: dict(v) for k, v in by_kind.items()},
        "refused_by_full_decode": sum(
            n for c in by_kind.values() for key, n in c.items() if "decodes=False" in key
        ),
        "vouched_for": sum(
            n for c in by_kind.values() for key, n in c.items() if "vouched=True" in key
        ),
        "vouched_but_refused": vouched_but_refused,
        "data_check_disagrees_with_full_decode": scan_disagrees,
        "timing_per_file": timing,
    }
    emit(result, args.out)
    return 0 if not vouched_but_refused and not unvouched_sources else 1


if __name__ == "__main__":
    sys.exit(main())
