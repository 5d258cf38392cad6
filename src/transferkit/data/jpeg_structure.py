"""Vouch for a JPEG file from its structure, without decoding a pixel.

Decoding a 12 MP phone photo, even at 1/8 scale, means Huffman-decoding every one of
its 3-5 MB; that is what made checking a photo folder slow. What makes a decoder
*refuse* a JPEG, though, is almost never in those bytes: libjpeg treats damage inside
the entropy-coded data as a warning and decodes on, while the errors it raises come
from the markers around it (a missing end, a length that runs past the file, a
Huffman or quantisation table that is malformed or absent, sampling factors or scan
parameters out of range, an unknown or unsupported marker). This module walks those
markers and checks what libjpeg checks, plus a little more, in a few milliseconds.

``structure_problem`` is one-sided by design: ``None`` means the file is a complete,
well-formed 8-bit baseline or progressive JPEG and a decoder will accept it; a
string means only that this walk cannot vouch for it (damage, or a rare variant such
as arithmetic coding or 12-bit samples), and the caller decodes the file to decide.
It never rejects a file by itself.
"""

from __future__ import annotations

import re

# A 0xFF in entropy-coded data is followed by 0x00 (a stuffed byte) or a restart
# marker (0xD0-0xD7); any other byte after it ends the scan's data.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")

_SOI, _EOI, _SOS, _DHT, _DQT, _DRI = 0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD
_HUFFMAN_FRAMES = {0xC0: False, 0xC1: False, 0xC2: True}  # marker: progressive
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SKIPPED = set(range(0xE0, 0xF0)) | {0xFE}  # APPn and COM: metadata, skipped by length
_MAX_BLOCKS_IN_MCU = 10  # libjpeg's D_MAX_BLOCKS_IN_MCU
_MAX_DIMENSION = 65500  # libjpeg's JPEG_MAX_DIMENSION


class _Unsure(Exception):
    """Why the walk cannot vouch for the file."""


def structure_problem(data: bytes) -> str | None:
    """``None`` when ``data`` is a structurally complete, well-formed JPEG that
    decodes; otherwise why this check cannot say so (decode to decide)."""
    try:
        _Walk(data).run()
    except _Unsure as exc:
        return str(exc)
    return None


class _Walk:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 2
        self.frame: dict[int, tuple[int, int, int]] | None = None  # id: (h, v, quant table)
        self.progressive = False
        self.quant: set[int] = set()
        self.huffman: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # (class, id): table
        self.sequential_seen: set[int] = set()
        self.dc_seen: set[int] = set()

    def run(self) -> None:
        if not self.data.startswith(b"\xff\xd8"):
            raise _Unsure("does not start with a JPEG start-of-image marker")
        handlers = {_DHT: self._huffman_tables, _DQT: self._quant_tables, _DRI: _restart}
        while (marker := self._marker()) != _EOI:
            if marker in (0x00, 0x01, _SOI) or 0xD0 <= marker <= 0xD7:
                raise _Unsure(f"marker 0x{marker:02X} out of place")
            segment = self._segment(marker)
            if marker in _HUFFMAN_FRAMES:
                self._frame(segment, _HUFFMAN_FRAMES[marker])
            elif marker == _SOS:
                self._scan(segment)
                self._skip_scan_data()
            elif marker in handlers:
                handlers[marker](segment)
            elif marker in _OTHER_FRAMES or marker == 0xCC:
                raise _Unsure(f"coding process 0x{marker:02X} (not Huffman baseline/progressive)")
            elif marker not in _SKIPPED:
                raise _Unsure(f"unexpected marker 0x{marker:02X}")
        self._complete()

    def _marker(self) -> int:
        """The marker at the current position: strict, no stray bytes before it."""
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise _Unsure("ends before its end-of-image marker (truncated)")
        if data[pos] != 0xFF:
            raise _Unsure(f"stray data at byte {pos} where a marker belongs")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            raise _Unsure("ends before its end-of-image marker (truncated)")
        self.pos = pos + 1
        return data[pos]

    def _segment(self, marker: int) -> bytes:
        data, pos = self.data, self.pos
        if pos + 2 > len(data):
            raise _Unsure("ends inside a marker segment (truncated)")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > len(data):
            raise _Unsure(f"segment 0x{marker:02X} at byte {pos} runs past the end of the file")
        self.pos = pos + length
        return data[pos + 2 : pos + length]

    def _frame(self, seg: bytes, progressive: bool) -> None:
        if self.frame is not None:
            raise _Unsure("two frame headers")
        if len(seg) < 6:
            raise _Unsure("frame header too short")
        precision, height, width, n = (
            seg[0],
            int.from_bytes(seg[1:3], "big"),
            int.from_bytes(seg[3:5], "big"),
            seg[5],
        )
        if precision != 8:
            raise _Unsure(f"{precision}-bit samples")
        if height == 0 or width == 0:
            raise _Unsure("frame header gives no height or width")
        if max(height, width) > _MAX_DIMENSION:
            raise _Unsure(f"wider or taller than libjpeg's {_MAX_DIMENSION} pixels")
        if n not in (1, 3, 4) or len(seg) != 6 + 3 * n:
            raise _Unsure("frame header with an unusual component count or length")
        frame = {}
        for i in range(n):
            cid, hv, tq = seg[6 + 3 * i : 9 + 3 * i]
            h, v = hv >> 4, hv & 15
            if cid in frame or not (1 <= h <= 4 and 1 <= v <= 4) or tq > 3:
                raise _Unsure("frame header with a bad component")
            frame[cid] = (h, v, tq)
        max_h = max(h for h, _, _ in frame.values())
        max_v = max(v for _, v, _ in frame.values())
        if any(max_h % h or max_v % v for h, v, _ in frame.values()):
            raise _Unsure("sampling factors that are not whole ratios of each other")
        self.frame, self.progressive = frame, progressive

    def _huffman_tables(self, seg: bytes) -> None:
        i = 0
        while i < len(seg):
            if i + 17 > len(seg):
                raise _Unsure("Huffman table segment too short")
            tc, th = seg[i] >> 4, seg[i] & 15
            counts = seg[i + 1 : i + 17]
            total = sum(counts)
            if tc > 1 or th > 3 or total > 256 or i + 17 + total > len(seg):
                raise _Unsure("malformed Huffman table")
            _check_code_lengths(counts)
            self.huffman[(tc, th)] = (counts, seg[i + 17 : i + 17 + total])
            i += 17 + total

    def _quant_tables(self, seg: bytes) -> None:
        i = 0
        while i < len(seg):
            pq, tq = seg[i] >> 4, seg[i] & 15
            size = 64 * (pq + 1)
            if pq > 1 or tq > 3 or i + 1 + size > len(seg):
                raise _Unsure("malformed quantisation table")
            self.quant.add(tq)
            i += 1 + size

    def _scan(self, seg: bytes) -> None:
        comps = self._scan_components(seg)
        ss, se, ah, al = seg[-3], seg[-2], seg[-1] >> 4, seg[-1] & 15
        frame = self.frame
        if len(comps) > 1 and sum(frame[c][0] * frame[c][1] for c in comps) > _MAX_BLOCKS_IN_MCU:
            raise _Unsure("too many blocks per MCU")
        if self.progressive:
            self._progressive_scan(comps, ss, se, ah, al)
        elif (ss, se, ah, al) != (0, 63, 0, 0):
            raise _Unsure("sequential scan with progressive parameters")
        elif self.sequential_seen.intersection(comps):
            raise _Unsure("a sequential scan repeats a component (libjpeg expects the end)")
        else:
            self.sequential_seen.update(comps)
        for i in range(len(comps)):
            td, ta = seg[2 + 2 * i] >> 4, seg[2 + 2 * i] & 15
            if not self.progressive or (ss == 0 and ah == 0):
                self._table_used(0, td)
            if not self.progressive or ss > 0:
                self._table_used(1, ta)

    def _scan_components(self, seg: bytes) -> list[int]:
        frame = self.frame
        if frame is None:
            raise _Unsure("scan before the frame header")
        n = seg[0] if seg else 0
        if not 1 <= n <= 4 or len(seg) != 4 + 2 * n:
            raise _Unsure("scan header with a bad component count or length")
        comps: list[int] = []
        for i in range(n):
            cid = seg[1 + 2 * i]
            if cid not in frame or cid in comps:
                raise _Unsure("scan names a component the frame does not have")
            if frame[cid][2] not in self.quant:
                raise _Unsure("scan uses an undefined quantisation table")
            comps.append(cid)
        order = list(frame)
        if [order.index(c) for c in comps] != sorted(order.index(c) for c in comps):
            raise _Unsure("scan components not in the frame's order")
        return comps

    def _progressive_scan(self, comps: list[int], ss: int, se: int, ah: int, al: int) -> None:
        if ss > se or se > 63 or (ss == 0) != (se == 0) or (ss > 0 and len(comps) > 1):
            raise _Unsure("progressive scan with bad spectral parameters")
        if ah > 13 or al > 13 or (ah and al != ah - 1):
            raise _Unsure("progressive scan with bad approximation parameters")
        if (ss > 0 or ah > 0) and not self.dc_seen.issuperset(comps):
            raise _Unsure("refinement or AC scan before the component's first DC scan")
        if ss == 0 and ah == 0:
            self.dc_seen.update(comps)

    def _table_used(self, tc: int, th: int) -> None:
        table = self.huffman.get((tc, th))
        if table is None:
            raise _Unsure("scan uses an undefined Huffman table")
        if tc == 0 and any(s > 15 for s in table[1]):
            raise _Unsure("DC Huffman table with impossible symbols")

    def _skip_scan_data(self) -> None:
        found = _SCAN_END.search(self.data, self.pos)
        if found is None:
            raise _Unsure("ends inside its image data (truncated)")
        self.pos = found.start()

    def _complete(self) -> None:
        if self.frame is None:
            raise _Unsure("no frame header")
        needed = set(self.frame)
        seen = self.dc_seen if self.progressive else self.sequential_seen
        if seen != needed:
            raise _Unsure("not every component has image data")


def _restart(segment: bytes) -> None:
    if len(segment) != 2:
        raise _Unsure("restart-interval segment of the wrong length")


def _check_code_lengths(counts: bytes) -> None:
    """The canonical Huffman code the counts describe must fit: at each length the
    codes assigned so far stay below 2**length (libjpeg's own check)."""
    code = 0
    for length, count in enumerate(counts, start=1):
        code += count
        if code >= 1 << length and count:
            raise _Unsure("Huffman code lengths that cannot form a code")
        code <<= 1
