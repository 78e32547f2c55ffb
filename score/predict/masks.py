"""Instances of a scene kept as their box and the bit-packed mask cropped to it, and their COCO RLE.

Shorthand: H x W the scene, h x w an instance's box. Boxes are integer pixel
edges (x0, y0, x1, y1), end-exclusive, in scene coordinates.

Every instance of a tiled scene is kept as a :class:`SceneInstance`: its
tight box and the mask cropped to that box, never a mask of the whole scene,
so memory grows with the tile and with the objects, not with the scene. The
crop is kept bit-packed (``np.packbits`` along rows: 8 pixels a byte, exact),
and the merger, the RLE encoder and the region reads unpack only bands of
rows or columns: an object may be as large as the scene (a random model at
threshold 0 chains ragged pieces across every border), and ragged masks
compress badly as run lengths but always 8x as bits.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from .windows import Box, near

__all__ = ["BAND_PIXELS", "RLE_CHUNK_PIXELS", "SceneInstance", "or_packed", "unpack"]

# Crop pixels unpacked at once (run-length encoding, unions): bounds the dense bool band in memory.
# A ragged chunk's runs cost about 10 bytes a pixel as numbers while encoded: the RLE of a
# 12000 x 4480 px ragged object peaked at +56 MiB with 2^22, +22 MiB with 2^20, in the same time.
RLE_CHUNK_PIXELS = 1 << 20
# Objects whose box holds more pixels than this have their outline (GeoJSON, geojson.py) and
# overlay contours (predictor.py) made from bands of at most this many pixels, never from
# the whole mask (a weak model at threshold 0 chains ragged objects as large as the scene).
BAND_PIXELS = 1 << 22


class SceneInstance:
    """One detected object in scene coordinates: class, score, tight box and the mask cropped to it.

    The crop is stored bit-packed: h x w pixels in h x ceil(w / 8) bytes
    (``np.packbits`` of each row, zero padding bits), so that an object as
    large as the scene costs 1 bit a pixel; :attr:`mask` unpacks it, and
    :meth:`region` unpacks only the rows and bytes it reads.

    Attributes:
        category: index of the class in the vocabulary.
        score: detection score in [0, 1].
        box: (x0, y0, x1, y1) pixel edges, end-exclusive: the tight box of the mask.
        bits: uint8 (y1 - y0, ceil((x1 - x0) / 8)), the packed rows of the mask.
        windows: the tile windows the instance was seen in (for merging).
    """

    __slots__ = ("category", "score", "box", "bits", "windows")

    def __init__(
        self,
        category: int,
        score: float,
        box: Box,
        mask: np.ndarray,
        windows: Optional[List[Box]] = None,
    ):
        """
        Args:
            category, score, box, windows: see the class attributes.
            mask: bool (y1 - y0, x1 - x0), the mask cropped to ``box``.
        """
        shape = (box[3] - box[1], box[2] - box[0])
        if mask.shape != shape:
            raise ValueError(f"mask of shape {mask.shape} for box {box} (expected {shape})")
        self._set(category, score, box, np.packbits(mask.astype(bool, copy=False), axis=1), windows)

    def _set(self, category: int, score: float, box: Box, bits: np.ndarray, windows: Optional[List[Box]]):
        self.category, self.score, self.box, self.bits = category, score, tuple(box), bits
        self.windows = list(windows) if windows is not None else []

    @classmethod
    def from_bits(
        cls, category: int, score: float, box: Box, bits: np.ndarray, windows: Optional[List[Box]] = None
    ) -> SceneInstance:
        """An instance from an already packed crop (``bits`` as the attribute, zero padding bits)."""
        inst = cls.__new__(cls)
        inst._set(category, score, box, bits, windows)
        return inst

    @property
    def shape(self) -> Tuple[int, int]:
        """(h, w) of the crop."""
        return self.box[3] - self.box[1], self.box[2] - self.box[0]

    @property
    def mask(self) -> np.ndarray:
        """The crop unpacked: bool (y1 - y0, x1 - x0) (a new array; for whole-mask consumers)."""
        return self._block(0, self.shape[0], 0, self.shape[1])

    def _block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Crop rows [r0, r1) x columns [c0, c1), unpacked: bool (r1 - r0, c1 - c0)."""
        return unpack(self.bits, r0, r1, c0, c1)

    def windows_near(self, box: Box) -> List[Box]:
        """The windows of :attr:`windows` that overlap or touch ``box``."""
        return [w for w in self.windows if near(w, box)]

    def has_window(self, window: Box) -> bool:
        """Whether the instance holds a piece of ``window``."""
        return window in self.windows

    @property
    def window_count(self) -> int:
        return len(self.windows)

    def window_array(self) -> np.ndarray:
        """:attr:`windows` as an int array (n, 4)."""
        return np.asarray(self.windows, dtype=np.int64).reshape(-1, 4)

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(_POPCOUNT[self.bits].sum(dtype=np.int64))

    def region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The mask on the scene region [y0, y1) x [x0, x1): bool (y1 - y0, x1 - x0), False off the box."""
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
        bx0, by0, bx1, by1 = self.box
        ix0, iy0, ix1, iy1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        if ix0 < ix1 and iy0 < iy1:
            crop = self._block(iy0 - by0, iy1 - by0, ix0 - bx0, ix1 - bx0)
            out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = crop
        return out

    def or_into(self, bits: np.ndarray, dx: int, dy: int) -> None:
        """OR this mask into packed rows ``bits`` (of a larger box) at column ``dx``, row ``dy`` of that box.

        A byte-aligned ``dx`` ORs the bytes as they are; otherwise bands of
        rows are unpacked, moved by ``dx % 8`` bits and packed again.
        """
        or_packed(bits, self.bits, self.shape[1], dx, dy)

    def bbox_xywh(self) -> List[float]:
        """COCO box [x, y, width, height] of the mask (pixel edges)."""
        x0, y0, x1, y1 = self.box
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]

    def to_coco_rle(self, height: int, width: int) -> dict:
        """COCO compressed RLE of the mask in an H x W image, built from the crop (no H x W array).

        COCO RLE counts alternate runs of 0 and 1 over the column-major
        flattening of the image. Runs of 1 are found column by column in
        chunks of the crop and encoded chunk by chunk (memory bounded by the
        chunk, not by the mask area or its number of runs); in the
        flattening a crop pixel (row, col) sits at (x0 + col) * H + (y0 + row).
        """
        return {"size": [height, width], "counts": self._rle_counts(height, width, *self.box[:2])}

    def crop_rle(self) -> dict:
        """COCO compressed RLE of the crop alone (size [h, w]), as ``mask_util.encode`` of :attr:`mask`."""
        h, w = self.shape
        return {"size": [h, w], "counts": self._rle_counts(h, w, 0, 0)}

    def _rle_counts(self, height: int, width: int, x0: int, y0: int) -> str:
        """The compressed COCO counts string of the crop placed at (x0, y0) in an H x W image."""
        h, w = self.shape
        step = max(1, RLE_CHUNK_PIXELS // max(h, 1))
        encoder = _RleEncoder(height * width)
        for c in range(0, w, step):
            columns = np.zeros((min(step, w - c), h + 2), dtype=np.int8)
            columns[:, 1:-1] = self._block(0, h, c, min(c + step, w)).T
            edges = np.diff(columns, axis=1)  # +1 where a run of 1 starts, -1 after it ends
            col, row = np.nonzero(edges == 1)
            starts = (col + x0 + c).astype(np.int64) * height + row + y0
            col, row = np.nonzero(edges == -1)
            encoder.add(starts, (col + x0 + c).astype(np.int64) * height + row + y0)
        return encoder.finish()

    def to_full_mask(self, height: int, width: int) -> np.ndarray:
        """The mask in an H x W image (for small images and tests; tiled scenes should keep the crop)."""
        return self.region(0, 0, width, height)


def unpack(bits: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows [r0, r1) x columns [c0, c1) of packed rows ``bits``, unpacked: bool (r1 - r0, c1 - c0)."""
    b0 = c0 // 8
    block = np.unpackbits(bits[r0:r1, b0 : -(-c1 // 8)], axis=1)
    return block[:, c0 - 8 * b0 : c1 - 8 * b0].view(bool)


def or_packed(bits: np.ndarray, source: np.ndarray, width: int, dx: int, dy: int) -> None:
    """OR packed rows ``source`` (``width`` px) into packed rows ``bits`` at column ``dx``, row ``dy``."""
    h = source.shape[0]
    b0, shift = divmod(dx, 8)
    if shift == 0:
        bits[dy : dy + h, b0 : b0 + source.shape[1]] |= source
        return
    step = max(1, RLE_CHUNK_PIXELS // max(width, 1))
    packed_width = -(-(width + shift) // 8)
    for r in range(0, h, step):
        rows = np.zeros((min(step, h - r), width + shift), dtype=np.uint8)
        rows[:, shift:] = np.unpackbits(source[r : r + step], axis=1, count=width)
        bits[dy + r : dy + r + len(rows), b0 : b0 + packed_width] |= np.packbits(rows, axis=1)


# Set bits of each byte value, for counting mask pixels in packed rows.
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def _encode_counts(values: np.ndarray) -> bytes:
    """pycocotools' ``rleToString`` for counts already differenced: 5 bits a character, least
    significant first, 0x20 when more follow, offset by 48 ("0")."""
    chars = np.zeros((values.size, 14), dtype=np.uint8)  # 14 x 5 bits hold any int64
    x, more = values.astype(np.int64), np.ones(values.size, dtype=bool)
    for k in range(chars.shape[1]):
        if not more.any():
            break
        c = x & 0x1F
        x = x >> 5  # arithmetic, as C's on a long
        follows = np.where(c & 0x10, x != -1, x != 0)
        chars[more, k] = (c | np.where(follows, 0x20, 0))[more] + 48
        more &= follows
    return chars[chars > 0].tobytes()


class _RleEncoder:
    """COCO compressed counts built from runs of 1 given in order, chunk by chunk.

    Runs are (start, end) positions in the column-major flattening, end
    exclusive; a run that ends where the next starts (the bottom of a column
    and the top of the next) is one run, also across chunks. The counts are
    differenced (count i minus count i - 2, from i = 3) and encoded as
    pycocotools does, so only a chunk's runs are ever held as numbers.
    """

    def __init__(self, size: int):
        self.size = size
        self._parts: List[bytes] = []
        self._pending: Optional[Tuple[int, int]] = None  # the last run: the next chunk may continue it
        self._end = 0  # end of the last run encoded
        self._count = 0  # counts encoded
        self._last = [0, 0]  # the last two counts encoded

    def add(self, starts: np.ndarray, ends: np.ndarray) -> None:
        if starts.size == 0:
            return
        joined = starts[1:] == ends[:-1]
        starts, ends = starts[np.r_[True, ~joined]], ends[np.r_[~joined, True]]
        if self._pending is not None:
            if starts[0] == self._pending[1]:
                starts = starts.copy()
                starts[0] = self._pending[0]
            else:
                starts, ends = np.r_[self._pending[0], starts], np.r_[self._pending[1], ends]
        self._pending = (int(starts[-1]), int(ends[-1]))
        self._encode(starts[:-1], ends[:-1])

    def _encode(self, starts: np.ndarray, ends: np.ndarray, tail: Sequence[int] = ()) -> None:
        counts = np.empty(2 * starts.size + len(tail), dtype=np.int64)
        counts[0 : 2 * starts.size : 2] = starts - np.r_[self._end, ends[:-1]]
        counts[1 : 2 * starts.size : 2] = ends - starts
        counts[2 * starts.size :] = tail
        if starts.size:
            self._end = int(ends[-1])
        if counts.size == 0:
            return
        both = np.r_[self._last, counts]
        deltas = counts.copy()
        first = max(0, 3 - self._count)  # counts 0, 1 and 2 are written as they are
        deltas[first:] -= both[first : first + counts.size - first]
        self._parts.append(_encode_counts(deltas))
        self._last = both[-2:].tolist()
        self._count += counts.size

    def finish(self) -> str:
        if self._pending is None:
            self._encode(np.zeros(0, np.int64), np.zeros(0, np.int64), [self.size])
        else:
            start, end = self._pending
            # pycocotools ends the counts with the last run: no empty run of 0 after a mask filling the end.
            tail = [self.size - end] if end < self.size else []
            self._encode(np.array([start]), np.array([end]), tail)
        return b"".join(self._parts).decode("ascii")
