"""Label maps of semantic splits: raw label values to contiguous class ids, ignore values to ignore.

A semantic split stores one single-channel label image per picture. Its
``LabelEncoding`` says which raw value stands for each class of its vocabulary
(``label_values``, in ``stuff_classes`` order) and which raw values are not
scored (``ignore_values``); a class whose value is ignored stays in the
vocabulary the model predicts over but is never scored (FloodNet's
"Background"). ``encode`` turns a raw label map into contiguous ids with the
ignore values replaced by ``ignore_label`` (detectron2's convention, 255), and
refuses any other value with an error that names the file and the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from PIL import Image

__all__ = ["LabelEncoding", "read_label"]


def read_label(file_name: str) -> np.ndarray:
    """The raw values (H, W) of a single-channel label image, never rescaled.

    8-bit, palette ("P": the palette indices are the values) and 16-bit images are
    read as stored; an image with colour channels is refused.
    """
    try:
        with Image.open(file_name) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise ValueError(
                    f"label image {file_name!r} has mode {img.mode}; a single-channel label is needed"
                )
            return np.asarray(img)
    except OSError as e:
        raise OSError(f"Cannot read label image {file_name!r}: {e}") from e


@dataclass(frozen=True)
class LabelEncoding:
    """Raw label values of a split's classes and its ignored values.

    Attributes:
        label_values: raw value of each class, in vocabulary (``stuff_classes``) order.
        ignore_values: raw values that are not scored and not trained on.
        ignore_label: value that ``encode`` writes for them (detectron2's ``ignore_label``).
    """

    label_values: tuple[int, ...]
    ignore_values: tuple[int, ...]
    ignore_label: int = 255

    def __post_init__(self):
        if len(set(self.label_values)) != len(self.label_values):
            raise ValueError(f"label values repeat: {self.label_values}")
        if len(self.label_values) >= self.ignore_label:
            raise ValueError(
                f"{len(self.label_values)} classes do not fit below ignore_label {self.ignore_label}"
            )

    @classmethod
    def from_metadata(cls, metadata: Any) -> LabelEncoding:
        """The encoding of a registered semantic split (its label_values, ignore_values, ignore_label)."""
        classes = metadata.get("stuff_classes")
        values = metadata.get("label_values", None)
        ignore_label = int(metadata.get("ignore_label", 255))
        return cls(
            tuple(int(v) for v in (range(len(classes)) if values is None else values)),
            tuple(int(v) for v in metadata.get("ignore_values", (ignore_label,))),
            ignore_label,
        )

    @property
    def scored(self) -> list[bool]:
        """For each class, whether its raw value is scored (not among the ignore values)."""
        return [v not in self.ignore_values for v in self.label_values]

    def _lookup(self, size: int) -> np.ndarray:
        lut = np.full(size, -1, dtype=np.int64)
        for contiguous, raw in enumerate(self.label_values):
            if raw < size:
                lut[raw] = contiguous
        for raw in self.ignore_values:
            if raw < size:
                lut[raw] = self.ignore_label
        return lut

    def unknown_values(self, raw: np.ndarray) -> list[int]:
        """Raw values present in ``raw`` that are neither a class nor ignored (sorted)."""
        present = np.unique(raw)
        known = set(self.label_values) | set(self.ignore_values)
        return [int(v) for v in present if int(v) not in known]

    def encode(self, raw: np.ndarray, file_name: Optional[str] = None) -> np.ndarray:
        """(H, W) raw values -> (H, W) uint8 contiguous ids, ``ignore_label`` where ignored.

        Raises:
            ValueError: a value is neither a class value nor an ignore value; the
                message names the file and every such value.
        """
        if raw.ndim != 2:
            raise ValueError(f"label {file_name!r}: expected a (H, W) map, got shape {raw.shape}")
        raw = raw.astype(np.int64, copy=False)
        if raw.size and raw.min() < 0:
            raise ValueError(f"label {file_name!r}: negative label value {int(raw.min())}")
        size = max(int(raw.max(initial=0)), *self.label_values, *self.ignore_values) + 1
        mapped = self._lookup(size)[raw]
        if (mapped < 0).any():
            raise ValueError(
                f"label {file_name!r}: value(s) {self.unknown_values(raw)} are neither class values "
                f"{list(self.label_values)} nor ignore values {list(self.ignore_values)}"
            )
        return mapped.astype(np.uint8)
