"""The JPEG structure check: vouches for good files without decoding, never for a
file a decoder refuses."""

import io
import random

import numpy as np
import pytest
from PIL import Image

from test_photos_copies import full_decode_ok
from transferkit.data import images
from transferkit.data.images import inspect_image
from transferkit.data.jpeg_structure import structure_problem


def _photo(size=(96, 64), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray((base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", **kw)
    return out.getvalue()


GOOD = {
    "baseline": lambda: _jpeg(_photo(), quality=90),
    "progressive": lambda: _jpeg(_photo(), quality=90, progressive=True),
    "no chroma subsampling": lambda: _jpeg(_photo(), quality=75, subsampling=0),
    "restart markers": lambda: _jpeg(_photo(), quality=85, restart_marker_blocks=2),
    "progressive with restarts": lambda: _jpeg(_photo(), progressive=True, restart_marker_rows=1),
    "grayscale": lambda: _jpeg(_photo().convert("L")),
    "CMYK": lambda: _jpeg(_photo().convert("CMYK")),
    "EXIF rotated": lambda: _jpeg(_photo(), exif=_rotated_exif()),
    "trailing bytes after the end": lambda: _jpeg(_photo()) + b"SAMSUNG trailer",
}


def _rotated_exif():
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


@pytest.mark.parametrize("name", sorted(GOOD))
def test_well_formed_jpegs_are_vouched_for(name):
    data = GOOD[name]()
    assert structure_problem(data) is None
    Image.open(io.BytesIO(data)).load()  # and they do decode


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:-2], "truncated"),
        (lambda d: b"\x00" + d[1:], "start-of-image"),
        (lambda d: d.replace(b"\xff\xc4", b"\xff\x02", 1), "unexpected marker"),
    ],
)
def test_damage_is_not_vouched_for(damage, expected):
    assert expected in structure_problem(damage(GOOD["baseline"]()))


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each header segment's contents, scans' data skipped."""
    out, pos = [], 2
    while data[pos + 1] != 0xD9:
        marker = data[pos + 1]
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        out.append((marker, pos + 4, end))
        pos = end
        if marker == 0xDA:
            while data[pos] != 0xFF or data[pos + 1] == 0 or 0xD0 <= data[pos + 1] <= 0xD7:
                pos += 1
    return out


def _edit(data: bytes, marker: int, change, nth: int = 0) -> bytes:
    """``data`` with the contents of its ``nth`` ``marker`` segment passed through
    ``change`` (a function of a bytearray, changing it in place)."""
    start, end = [(s, e) for m, s, e in _segments(data) if m == marker][nth]
    seg = bytearray(data[start:end])
    change(seg)
    return data[:start] + bytes(seg) + data[end:]


def _sampling(factors):
    def change(seg):
        for i, (h, v) in enumerate(factors):
            seg[6 + 3 * i + 1] = h << 4 | v

    return change


def _refinement_of_two_bits(seg):
    seg[-1] = 0x20  # Ah=2, Al=0: libjpeg needs Al == Ah - 1


def _reversed_components(seg):
    n = seg[0]
    pairs = [bytes(seg[1 + 2 * i : 3 + 2 * i]) for i in range(n)]
    seg[1 : 1 + 2 * n] = b"".join(reversed(pairs))


def _scan_twice(data: bytes) -> bytes:
    return data[:-2] + data[data.index(b"\xff\xda") : -2] + data[-2:]


def _first_refinement_scan(data: bytes) -> int:
    scans = [data[s:e] for m, s, e in _segments(data) if m == 0xDA]
    return next(i for i, seg in enumerate(scans) if seg[-3] == 0 and seg[-1] >> 4)


# Each of these once passed the walk although libjpeg refuses it (found by review).
REFUSED_BY_LIBJPEG = {
    "sampling factors 3x1, 2x1, 1x1": lambda d: _edit(d, 0xC0, _sampling([(3, 1), (2, 1), (1, 1)])),
    "width 65,501": lambda d: _edit(d, 0xC0, lambda seg: seg.__setitem__(slice(3, 5), b"\xff\xdd")),
    "progressive refinement Ah=2, Al=0": lambda d: _edit(
        GOOD["progressive"](),
        0xDA,
        _refinement_of_two_bits,
        _first_refinement_scan(GOOD["progressive"]()),
    ),
    "a complete baseline scan repeated": _scan_twice,
    "scan components in reverse order": lambda d: _edit(d, 0xDA, _reversed_components),
}


@pytest.mark.parametrize("name", sorted(REFUSED_BY_LIBJPEG))
def test_what_libjpeg_refuses_in_the_headers_is_not_vouched_for(name):
    data = REFUSED_BY_LIBJPEG[name](GOOD["no chroma subsampling"]())
    assert not full_decode_ok(data)
    assert structure_problem(data) is not None
    probe = inspect_image(data)[0]
    assert not probe.ok and probe.kind == "corrupt"


def _corrupt(data: bytes, rng: random.Random) -> bytes:
    d = bytearray(data)
    n, header = len(d), data.find(b"\xff\xda") + 16
    kind = rng.randrange(7)
    if kind == 6:  # one byte of any scan's header (a progressive file has several)
        start, end = rng.choice([(s, e) for m, s, e in _segments(data) if m == 0xDA])
        d[rng.randrange(start, end)] = rng.randrange(256)
        return bytes(d)
    if kind == 0:
        return bytes(d[: rng.randrange(2, n)])
    if kind == 1:
        for _ in range(rng.choice((1, 8, 64))):
            d[rng.randrange(n)] = rng.randrange(256)
    elif kind == 2:
        for _ in range(rng.choice((1, 4))):
            d[rng.randrange(header)] = rng.randrange(256)
    elif kind == 3:
        i = rng.randrange(n)
        d[i : i + 512] = bytes(len(d[i : i + 512]))
    elif kind == 4:
        i = rng.randrange(n)
        del d[i : i + rng.randrange(1, 600)]
    else:
        i = rng.randrange(n)
        d[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 100)))
    return bytes(d)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # damaged EXIF blocks, on purpose
def test_never_vouches_for_a_file_the_decoder_refuses():
    """Seeded random damage (truncation, flipped bytes, header damage, zeroed and
    dropped and inserted runs) to every kind of good JPEG: whenever the check
    vouches, the file must decode. (On 9,000 such files no exception was found.)"""
    rng = random.Random(0)
    sources = [make() for make in GOOD.values()]
    refused = vouched = 0
    for _ in range(600):
        data = _corrupt(rng.choice(sources), rng)
        ok = full_decode_ok(data)
        refused += not ok
        if structure_problem(data) is None:
            vouched += 1
            assert ok, "vouched for a JPEG that does not decode"
    assert refused > 150 and vouched > 150  # both sides of the line were exercised


def test_data_check_does_not_decode_a_jpeg_it_can_vouch_for(monkeypatch):
    decoded = []
    real = images._decode_problem
    monkeypatch.setattr(images, "_decode_problem", lambda *a: decoded.append(1) or real(*a))
    probe, copy = inspect_image(GOOD["EXIF rotated"]())
    assert probe.ok and copy is None and decoded == []
    assert (probe.width, probe.height, probe.orientation) == (96, 64, 6)


def test_a_jpeg_it_cannot_vouch_for_is_decoded_to_decide(monkeypatch):
    decoded = []
    real = images._decode_problem
    monkeypatch.setattr(images, "_decode_problem", lambda *a: decoded.append(1) or real(*a))
    good = GOOD["baseline"]()
    sos = good.index(b"\xff\xda")
    end = sos + 2 + int.from_bytes(good[sos + 2 : sos + 4], "big")
    assert good[end - 3 : end] == b"\x00\x3f\x00"
    # A baseline scan header with a successive-approximation bit set: libjpeg warns
    # and decodes; the structure check does not vouch.
    odd = good[: end - 1] + b"\x01" + good[end:]
    assert structure_problem(odd) is not None and full_decode_ok(odd)
    assert inspect_image(odd)[0].ok and decoded == [1]
    truncated = good[: len(good) // 2]
    probe = inspect_image(truncated)[0]
    assert not probe.ok and probe.kind == "corrupt" and decoded == [1, 1]
