"""Dataset validation before the first iteration: find every bad record at once.

A record is bad when its image file is missing, its header cannot be read, a
JPEG or PNG ends before its end marker (a truncated download), its size is not
the JSON's ``height`` / ``width``, or an annotation has no usable mask: an empty
``segmentation``, a polygon of fewer than 3 points or of zero area, or an RLE
whose ``size`` is not the image's. Only headers and the file's last bytes are
read, never the pixels.

``validate_dataset`` returns the records left; by default a bad record raises
``InvalidDatasetError`` listing all of them (file and annotation id), with
DATASETS.DROP_INVALID the bad images and annotations are dropped and counted.
The problems found are cached per annotation file, keyed by its size and mtime,
so a second run over an unchanged file reads no image. ``annotation_problem``
is the one definition of a usable mask; the training mapper uses it too.

Semantic records (with a ``sem_seg_file_name``) are checked by
``sem_seg_record_problems``: the image as above, and the label image present,
readable, single-channel, of the image's size and holding only values of the
split's class list or its ignore values (``LabelEncoding``); these checks read
the label pixels. Their cache is keyed by the size and mtime of every image and
label file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Optional

from PIL import Image
from tqdm import tqdm

from ..fileio import atomic_write
from .labels import LabelEncoding, read_label

__all__ = [
    "InvalidDatasetError",
    "annotation_problem",
    "image_problem",
    "sem_seg_record_problems",
    "validate_dataset",
]

logger = logging.getLogger(__name__)

# The last bytes of a complete file: JPEG's EOI marker, PNG's IEND chunk. A
# JPEG may carry a few bytes of padding after EOI, hence the search window.
_TAIL_BYTES = 32
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


class InvalidDatasetError(ValueError):
    """Records of a dataset that cannot be trained or evaluated on; the message lists them all."""


def image_problem(file_name: str, height: Optional[int], width: Optional[int]) -> Optional[str]:
    """Why the image of a record is unusable, or None. Reads the header and the last bytes only."""
    if not os.path.isfile(file_name):
        return "image file not found"
    try:
        with Image.open(file_name) as img:
            fmt, (w, h) = img.format, img.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return f"image header unreadable ({e})"
    marker = _END_MARKERS.get(fmt)
    if marker is not None:
        with open(file_name, "rb") as f:
            f.seek(max(0, os.path.getsize(file_name) - _TAIL_BYTES))
            if marker not in f.read():
                return f"truncated {fmt} (no end marker)"
    if (height is not None and h != height) or (width is not None and w != width):
        return f"image is {w}x{h} (WxH), the JSON says {width}x{height}"
    return None


def _polygon_area(flat: list[float]) -> float:
    xs, ys = flat[0::2], flat[1::2]
    n = len(xs)
    return 0.5 * abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n)))


def annotation_problem(anno: dict[str, Any], height: Optional[int], width: Optional[int]) -> Optional[str]:
    """Why an annotation has no usable mask, or None.

    Usable: a non-empty list of polygons, each of at least 3 points and non-zero
    area, or an RLE dict whose ``size`` is [height, width].
    """
    seg = anno.get("segmentation")
    if seg is None:
        # detectron2's load_coco_json leaves the key out for an empty list.
        return "empty segmentation"
    if isinstance(seg, dict):
        size = seg.get("size")
        if height is not None and width is not None and list(size or ()) != [height, width]:
            return f"RLE size {size} is not the image's [{height}, {width}]"
        return None
    if not isinstance(seg, list) or not seg:
        return "empty segmentation"
    for poly in seg:
        if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
            return f"polygon of {len(poly) // 2 if isinstance(poly, (list, tuple)) else 0} points (need >= 3)"
        if _polygon_area([float(v) for v in poly]) <= 0.0:
            return "polygon of zero area"
    return None


def sem_seg_record_problems(record: dict[str, Any], encoding: LabelEncoding) -> list[tuple[None, str]]:
    """Problems of a semantic record: its image, and its label's presence, size and values.

    Returns:
        [(None, why)] (the whole record is unusable), empty when the record is usable.
    """
    h, w = record.get("height"), record.get("width")
    why = image_problem(record["file_name"], h, w)
    if why is not None:
        return [(None, why)]
    label_file = record["sem_seg_file_name"]
    if not os.path.isfile(label_file):
        return [(None, f"label file not found: {label_file}")]
    try:
        label = read_label(label_file)
    except (OSError, ValueError) as e:
        return [(None, f"label unreadable: {e}")]
    if h is None or w is None:
        with Image.open(record["file_name"]) as img:
            w, h = img.size
    if label.shape != (h, w):
        return [(None, f"label {label_file} is {label.shape[1]}x{label.shape[0]} (WxH), the image {w}x{h}")]
    unknown = encoding.unknown_values(label)
    if unknown:
        return [
            (
                None,
                f"label {label_file} has value(s) {unknown} outside the class values "
                f"{list(encoding.label_values)} and the ignore values {list(encoding.ignore_values)}",
            )
        ]
    return []


def _record_problems(
    record: dict[str, Any], encoding: Optional[LabelEncoding] = None
) -> list[tuple[Optional[int], str]]:
    if "sem_seg_file_name" in record and encoding is not None:
        return sem_seg_record_problems(record, encoding)
    h, w = record.get("height"), record.get("width")
    found = []
    why = image_problem(record["file_name"], h, w)
    if why is not None:
        found.append((None, why))
    for anno in record.get("annotations", []):
        why = annotation_problem(anno, h, w)
        if why is not None:
            found.append((anno.get("id"), why))
    return found


def _files_cache_path(cache_dir: str, dicts: list[dict[str, Any]], encoding: LabelEncoding) -> str:
    """Cache file of semantic records: keyed by the encoding and every image and label's size and mtime."""
    digest = hashlib.sha1(repr(encoding).encode("utf-8"))
    for record in dicts:
        for key in ("file_name", "sem_seg_file_name"):
            path = record.get(key)
            try:
                st = os.stat(path)
                digest.update(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except (OSError, TypeError):
                digest.update(f"{path}|missing\n".encode())
    return os.path.join(cache_dir, digest.hexdigest() + ".json")


def _cache_path(cache_dir: str, json_file: str) -> Optional[str]:
    try:
        st = os.stat(json_file)
    except OSError:
        return None
    key = f"{os.path.abspath(json_file)}|{st.st_size}|{st.st_mtime_ns}"
    return os.path.join(cache_dir, hashlib.sha1(key.encode("utf-8")).hexdigest() + ".json")


def validate_dataset(
    dicts: list[dict[str, Any]],
    name: str,
    *,
    json_file: Optional[str] = None,
    drop_invalid: bool = False,
    cache_dir: Optional[str] = None,
    label_encoding: Optional[LabelEncoding] = None,
) -> list[dict[str, Any]]:
    """Check every record of a dataset; stop on bad ones, or drop them.

    Args:
        dicts: detectron2 dataset dicts (``file_name``, ``height``, ``width``,
            ``annotations`` with their ``id``).
        name: dataset name, for messages.
        json_file: the annotation file the dicts come from; keys the cache.
        drop_invalid: drop bad images and annotations (logging the counts)
            instead of raising.
        cache_dir: folder of the cache; None or "" disables it.
        label_encoding: the split's label encoding; semantic records (with a
            ``sem_seg_file_name``) are checked with it (``sem_seg_record_problems``).

    Returns:
        The usable records (``dicts`` itself when every record is usable).

    Raises:
        InvalidDatasetError: listing every bad record, when ``drop_invalid`` is False.
    """
    cache = _cache_path(cache_dir, json_file) if cache_dir and json_file else None
    if cache_dir and label_encoding is not None and not json_file:
        cache = _files_cache_path(cache_dir, dicts, label_encoding)
    problems: Optional[dict[str, list]] = None
    if cache is not None and os.path.isfile(cache):
        with open(cache, encoding="utf-8") as f:
            problems = json.load(f)
        logger.info("Validation of %s read from the cache %s", name, cache)
    if problems is None:
        problems = {}
        for record in tqdm(dicts, desc=f"Validating {name}", unit="img", mininterval=1.0):
            found = _record_problems(record, label_encoding)
            if found:
                problems[record["file_name"]] = found
        if cache is not None:
            with atomic_write(cache) as f:
                json.dump(problems, f)
    if not problems:
        return dicts
    lines = [
        f"  {file_name}: " + ("image" if ann_id is None else f"annotation id {ann_id}") + f": {why}"
        for file_name, found in problems.items()
        for ann_id, why in found
    ]
    if not drop_invalid:
        raise InvalidDatasetError(
            f"Dataset '{name}' has {len(lines)} bad record(s)"
            + (f" (annotation file {json_file})" if json_file else "")
            + ":\n"
            + "\n".join(lines)
            + "\nFix them, or set DATASETS.DROP_INVALID True to drop them."
        )
    kept, dropped_images, dropped_annos = [], 0, 0
    for record in dicts:
        found = problems.get(record["file_name"])
        if not found:
            kept.append(record)
            continue
        if any(ann_id is None for ann_id, _ in found):
            dropped_images += 1
            continue
        bad_ids = {ann_id for ann_id, _ in found}
        record = dict(record)
        annos = record.get("annotations", [])
        record["annotations"] = [a for a in annos if a.get("id") not in bad_ids]
        dropped_annos += len(annos) - len(record["annotations"])
        kept.append(record)
    logger.warning(
        "Dataset '%s': DATASETS.DROP_INVALID dropped %d image(s) and %d annotation(s):\n%s",
        name,
        dropped_images,
        dropped_annos,
        "\n".join(lines),
    )
    return kept
