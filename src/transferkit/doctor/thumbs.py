"""The perceptual check for near copies: each image as 16 x 16 grayscale thumbnails
(from its working copy, so a large photo is decoded as the loaders see it: resized
to 64 x 64 with a Lanczos filter, then averaged over 4 x 4 blocks), centred and
scaled to unit length: one of the whole picture and five "views" (the picture less
5% of its width and height, at each corner and around the centre). Two images'
correlation is the best dot product of one's whole thumbnail with the other's whole
thumbnail or views, either way round: a 5%-cropped copy lines up with the view of
its original that lost the same border.

On the bench a resized or re-compressed copy kept a correlation >= 0.999 with its
original, a cropped one 1.000 through the matching view, while no two different
Fashion-MNIST pictures passed 0.993. The Lanczos filter matters: with a box filter
alone a bicubic enlargement of a picture with thin lines fell to 0.970; the common
64 px step makes a picture smaller than 16 px comparable with its enlargements. A
64-bit DCT hash was tried first: on those centred, low-detail pictures, different
images came within 2 bits of each other, and crops moved 10 to 20 bits.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..data.copies import WORKING_SIDE, CopyCache, load_working

SIDE = 16
MARGIN = 0.05
VIEWS = 6  # the whole picture, then the views


def thumbnail_vector(img: Image.Image) -> np.ndarray:
    """The unit-length, zero-mean 16 x 16 grayscale thumbnail of a PIL image."""
    gray = img.convert("L").resize((4 * SIDE, 4 * SIDE), Image.Resampling.LANCZOS)
    gray = gray.resize((SIDE, SIDE), Image.Resampling.BOX)
    v = np.asarray(gray, np.float32).ravel()
    v = v - v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def thumbnail_views(img: Image.Image) -> np.ndarray:
    """``(VIEWS, 256)``: the whole picture's thumbnail, then its cropped views'."""
    w, h = img.size
    dx, dy = w * MARGIN, h * MARGIN
    boxes = [
        (0, 0, w - dx, h - dy),
        (dx, 0, w, h - dy),
        (0, dy, w - dx, h),
        (dx, dy, w, h),
        (dx / 2, dy / 2, w - dx / 2, h - dy / 2),
    ]
    crops = [img.crop(tuple(round(b) for b in box)) for box in boxes]
    return np.stack([thumbnail_vector(img), *(thumbnail_vector(c) for c in crops)])


def thumbnails(paths_and_digests, cache: CopyCache | None = None) -> np.ndarray:
    """``(N, VIEWS, 256)`` thumbnails of ``(path, digest)`` pairs. An image that cannot
    be read gets zeros: it correlates with nothing (the loaders refuse it anyway)."""
    from ..errors import InputError

    cache = cache if cache is not None else CopyCache()
    out = np.zeros((len(paths_and_digests), VIEWS, SIDE * SIDE), np.float32)
    for i, (path, digest) in enumerate(paths_and_digests):
        try:
            out[i] = thumbnail_views(load_working(path, digest, WORKING_SIDE, 3, cache))
        except (InputError, OSError):
            continue
    return out


def correlation(thumbs: np.ndarray, i, j) -> np.ndarray:
    """The aligned correlation of image pairs ``(i[k], j[k])``."""
    whole_i, whole_j = thumbs[i, 0], thumbs[j, 0]
    a = np.einsum("pd,pvd->pv", whole_i, thumbs[j]).max(1)
    b = np.einsum("pd,pvd->pv", whole_j, thumbs[i]).max(1)
    return np.maximum(a, b)


def similar_pairs(vectors: np.ndarray, minimum: float, block: int = 1024) -> np.ndarray:
    """``(P, 2)`` index pairs ``i < j`` of unit rows whose dot product is >= ``minimum``
    (computed in blocks: no N x N matrix for large sets)."""
    found = []
    for start in range(0, len(vectors), block):
        sim = vectors[start : start + block] @ vectors.T
        i, j = np.nonzero(sim >= minimum)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], 1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def aligned_pairs(thumbs: np.ndarray, minimum: float, block: int = 512) -> np.ndarray:
    """``(P, 2)`` index pairs ``i < j`` whose aligned correlation is >= ``minimum``."""
    whole = thumbs[:, 0]
    found = []
    for start in range(0, len(thumbs), block):
        part = whole[start : start + block]
        best = np.max([part @ thumbs[:, v].T for v in range(thumbs.shape[1])], axis=0)
        cross = np.max([thumbs[start : start + block, v] @ whole.T for v in range(1, VIEWS)], 0)
        i, j = np.nonzero(np.maximum(best, cross) >= minimum)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], 1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)
