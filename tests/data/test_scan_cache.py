"""The scan cache skips decoding, never hashing: a file's digest is always the digest
of the bytes it holds now, whatever its size and modification time say."""

from __future__ import annotations

import hashlib
import os

from data_builders import noise, save

from transferkit.data import scanning
from transferkit.data.scanning import ScanOptions, verify_files, walk_class_folder


def _scan(root, cache_dir):
    skipped = []
    found = walk_class_folder(
        str(root / "a"), label="a", split="train", root=str(root), skipped=skipped
    )
    result = verify_files(found, root=str(root), options=ScanOptions(cache_dir=str(cache_dir)))
    assert not skipped
    return result, {f.candidate.rel: f.digest for f in result.files}


def _edit_in_place_keeping_size_and_mtime(path, new_bytes):
    st = os.stat(path)
    assert len(new_bytes) == st.st_size
    with open(path, "r+b") as f:  # same inode, same size
        f.write(new_bytes)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_a_file_edited_in_place_with_size_and_mtime_kept_gets_its_new_digest(tmp_path):
    for i in range(3):  # uncompressed BMP: same pixel size, same file size
        save(noise(seed=i), tmp_path / "a" / f"img{i}.bmp")
    first, digests = _scan(tmp_path, tmp_path / "cache")
    assert first.cache_misses == 3
    replacement = tmp_path / "other.bmp"
    save(noise(seed=99), replacement)
    _edit_in_place_keeping_size_and_mtime(tmp_path / "a" / "img1.bmp", replacement.read_bytes())

    second, again = _scan(tmp_path, tmp_path / "cache")
    assert again["a/img1.bmp"] == hashlib.sha1(replacement.read_bytes()).hexdigest()
    assert again["a/img1.bmp"] != digests["a/img1.bmp"]
    assert {k: v for k, v in again.items() if k != "a/img1.bmp"} == {
        k: v for k, v in digests.items() if k != "a/img1.bmp"
    }
    assert (second.cache_hits, second.cache_misses) == (2, 1)


def test_a_warm_scan_decodes_nothing(tmp_path, monkeypatch):
    for i in range(20):
        save(noise(seed=i), tmp_path / "a" / f"img{i}.png")
    _scan(tmp_path, tmp_path / "cache")
    decoded = []
    real = scanning.inspect_image
    monkeypatch.setattr(scanning, "inspect_image", lambda *a: decoded.append(1) or real(*a))
    warm, _ = _scan(tmp_path, tmp_path / "cache")
    assert decoded == [] and (warm.cache_hits, warm.cache_misses) == (20, 0)


def test_a_file_that_became_unreadable_is_not_served_from_the_cache(tmp_path, monkeypatch):
    for i in range(2):
        save(noise(seed=i), tmp_path / "a" / f"img{i}.png")
    _scan(tmp_path, tmp_path / "cache")
    real = scanning._read_file

    def read(path):
        if path.endswith("img0.png"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(scanning, "_read_file", read)
    result, digests = _scan(tmp_path, tmp_path / "cache")
    assert list(digests) == ["a/img1.png"]
    assert [(s.path, s.reason) for s in result.skipped] == [
        ("a/img0.png", "cannot read: permission denied")
    ]
