"""Dataset validation before the model is built: find every bad record at once.

Two kinds of check, each listing every problem it finds:

* **File checks** of a COCO instance JSON, read as written (detectron2's
  ``load_coco_json`` silently drops some bad polygons and merges images that
  share an id, so the file itself is read): no ``annotations`` list or an
  empty one, two images with the same ``id`` or the same ``file_name``, an
  annotation of an image not in ``images``, and every annotation without a
  usable mask (below). A file problem cannot be dropped: the run stops.
* **Record checks**, one function per kind of record (:data:`RECORD_CHECKS`;
  a new record type, e.g. semantic label maps, registers its own with
  :func:`register_record_check`). For instance records: the image file is
  missing, its header cannot be read, a JPEG or PNG ends before its end
  marker (a truncated download), or its size as detectron2 reads it (after
  the EXIF orientation, which swaps width and height for orientations 5-8)
  is not the JSON's ``height`` / ``width``; and each annotation's mask.

A usable mask (:func:`annotation_problem`, also the training mapper's filter):
a non-empty list of polygons, each an even number (>= 6) of finite numbers
within one image size of the image and of non-zero area, or an RLE whose
``size`` is the image's (an uncompressed one: counts summing to height x
width). So the ground truth can always be encoded as a mask of the image's
size: a malformed polygon is reported here, by annotation id, never an
out-of-memory in the COCO mask encoding of the evaluation.

Semantic records (with a ``sem_seg_file_name``) are checked by
``sem_seg_record_problems``: the image as above, and the label image present,
readable, single-channel, of the image's size and holding only values of the
split's class list or its ignore values (``LabelEncoding``); these checks read
the label pixels. Otherwise only headers and the file's last bytes are read,
never the pixels.
``validate_dataset`` returns the records left; by default a bad record raises
``InvalidDatasetError`` listing all of them (file and annotation id), with
DATASETS.DROP_INVALID the bad images and annotations are dropped and counted.
The problems found are cached per annotation file, keyed by its path, size
and mtime, by the size and mtime of every file the records name (one
``os.stat`` each: a changed, added or removed image is noticed) and by the
version of the checks, so a second run over unchanged files reads no image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
from collections import defaultdict
from typing import Any, Callable, Optional

from PIL import Image
from tqdm import tqdm

from ..fileio import atomic_write
from .labels import LabelEncoding, read_label

__all__ = [
    "RECORD_CHECKS",
    "InvalidDatasetError",
    "annotation_problem",
    "coco_file_problems",
    "image_problem",
    "register_record_check",
    "sem_seg_record_problems",
    "validate_dataset",
]

logger = logging.getLogger(__name__)

# The last bytes of a complete file: JPEG's EOI marker, PNG's IEND chunk. A
# JPEG may carry a few bytes of padding after EOI, hence the search window.
_TAIL_BYTES = 32
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
# EXIF orientations that turn the picture a quarter (transpose, rotate 270,
# transverse, rotate 90): detectron2's read_image swaps width and height.
_EXIF_ORIENTATION_TAG = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)
# Part of the cache key: a cache written by other checks is not trusted.
_CHECKS_VERSION = "2"

# (annotation id or None for the image itself, reason)
Problem = tuple[Optional[int], str]
RecordCheck = Callable[[dict[str, Any]], list[Problem]]


class InvalidDatasetError(ValueError):
    """Records of a dataset that cannot be trained or evaluated on; the message lists them all."""


def _exif_orientation(img: Image.Image) -> Optional[int]:
    try:
        return img.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:  # as detectron2's read_image: an unreadable EXIF block means no orientation
        return None


def image_problem(file_name: str, height: Optional[int], width: Optional[int]) -> Optional[str]:
    """Why the image of a record is unusable, or None. Reads the header and the last bytes only.

    The size compared with ``height`` / ``width`` is the one detectron2's
    ``read_image`` returns: after the EXIF orientation.
    """
    if not os.path.isfile(file_name):
        return "image file not found"
    try:
        with Image.open(file_name) as img:
            fmt, (w, h) = img.format, img.size
            orientation = _exif_orientation(img)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return f"image header unreadable ({e})"
    marker = _END_MARKERS.get(fmt)
    if marker is not None:
        with open(file_name, "rb") as f:
            f.seek(max(0, os.path.getsize(file_name) - _TAIL_BYTES))
            if marker not in f.read():
                return f"truncated {fmt} (no end marker)"
    stored = ""
    if orientation in _QUARTER_TURNS:
        stored = f" after its EXIF orientation {orientation} (stored {w}x{h}; detectron2 reads it turned)"
        w, h = h, w
    if (height is not None and h != height) or (width is not None and w != width):
        return f"image is {w}x{h} (WxH){stored}, the JSON says {width}x{height}"
    return None


def _polygon_area(flat: list[float]) -> float:
    xs, ys = flat[0::2], flat[1::2]
    n = len(xs)
    return 0.5 * abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n)))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _polygon_problem(poly: Any, height: Optional[int], width: Optional[int]) -> Optional[str]:
    if not isinstance(poly, (list, tuple)):
        return f"polygon of type {type(poly).__name__} (need a list of x, y numbers)"
    bad = [v for v in poly if not _is_number(v)]
    if bad:
        return f"polygon coordinate {bad[0]!r} is not a number"
    if not all(math.isfinite(v) for v in poly):
        return f"polygon coordinate {next(v for v in poly if not math.isfinite(v))} is not finite"
    if len(poly) % 2:
        return f"polygon of {len(poly)} coordinates (an odd number: need x, y pairs)"
    if len(poly) < 6:
        return f"polygon of {len(poly) // 2} points (need >= 3)"
    if height is not None and width is not None:
        # Beyond one image size outside the image the mask encoding's work grows
        # with the coordinates, not with the image: such a point is a typo.
        for x, y in zip(poly[0::2], poly[1::2]):
            if not (-width <= x <= 2 * width and -height <= y <= 2 * height):
                return f"polygon point ({x}, {y}) lies far outside the {width}x{height} (WxH) image"
    if _polygon_area([float(v) for v in poly]) <= 0.0:
        return "polygon of zero area"
    return None


def annotation_problem(anno: dict[str, Any], height: Optional[int], width: Optional[int]) -> Optional[str]:
    """Why an annotation has no usable mask, or None.

    Usable: a non-empty list of polygons, each an even number (>= 6) of finite
    numbers, within one image size of the image, of non-zero area; or an RLE
    dict whose ``size`` is [height, width] (uncompressed: counts summing to
    height x width).
    """
    seg = anno.get("segmentation")
    if seg is None:
        # detectron2's load_coco_json leaves the key out for an empty list.
        return "empty segmentation"
    if isinstance(seg, dict):
        size = seg.get("size")
        if height is not None and width is not None and list(size or ()) != [height, width]:
            return f"RLE size {size} is not the image's [{height}, {width}]"
        counts = seg.get("counts")
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "RLE counts are not all non-negative integers"
            if height is not None and width is not None and sum(counts) != height * width:
                return f"RLE counts sum to {sum(counts)}, not height x width = {height * width}"
        elif not isinstance(counts, (str, bytes)):
            return f"RLE counts of type {type(counts).__name__} (need a string or a list)"
        return None
    if not isinstance(seg, list):
        return f"segmentation of type {type(seg).__name__} (need a list of polygons or an RLE dict)"
    if not seg:
        return "empty segmentation"
    for poly in seg:
        why = _polygon_problem(poly, height, width)
        if why is not None:
            return why
    return None


def _image_check(record: dict[str, Any]) -> list[Problem]:
    why = image_problem(record["file_name"], record.get("height"), record.get("width"))
    return [] if why is None else [(None, why)]


def _annotations_check(record: dict[str, Any]) -> list[Problem]:
    h, w = record.get("height"), record.get("width")
    found = []
    for anno in record.get("annotations", []):
        why = annotation_problem(anno, h, w)
        if why is not None:
            found.append((anno.get("id"), why))
    return found


# Run on every record, in order; a record type with files or annotations of
# its own (semantic label maps) adds its check with register_record_check.
RECORD_CHECKS: list[RecordCheck] = [_image_check, _annotations_check]


def register_record_check(check: RecordCheck) -> RecordCheck:
    """Add ``check(record) -> [(annotation id or None, reason)]`` to :data:`RECORD_CHECKS` (a decorator).

    A check returns no problem for a record it does not apply to. Changing
    the checks should bump the cache version (``_CHECKS_VERSION``).
    """
    if check not in RECORD_CHECKS:
        RECORD_CHECKS.append(check)
    return check


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


def _record_problems(record: dict[str, Any], encoding: Optional[LabelEncoding] = None) -> list[Problem]:
    if "sem_seg_file_name" in record and encoding is not None:
        return sem_seg_record_problems(record, encoding)
    return [problem for check in RECORD_CHECKS for problem in check(record)]


def coco_file_problems(coco: Any) -> tuple[list[str], dict[Any, list[Problem]]]:
    """Problems of a COCO instance JSON as written: of the whole file, and per image id.

    Args:
        coco: the parsed JSON.

    Returns:
        (problems of the file: no annotations, duplicate image ids or file
        names, annotations of unknown images; {image id: [(annotation id,
        reason)]} for every annotation without a usable mask).
    """
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        return ["no 'images' list: not a COCO instance JSON"], {}
    file_problems: list[str] = []
    if not coco["images"]:
        file_problems.append("an empty 'images' list")
    annotations = coco.get("annotations")
    if annotations is None:
        file_problems.append("no 'annotations' list: nothing to train or evaluate on")
    elif not isinstance(annotations, list) or not annotations:
        file_problems.append("an empty 'annotations' list: nothing to train or evaluate on")
        annotations = []
    by_id: dict[Any, list[dict]] = defaultdict(list)
    by_name: dict[Any, list[Any]] = defaultdict(list)
    for image in coco["images"]:
        by_id[image.get("id")].append(image)
        by_name[image.get("file_name")].append(image.get("id"))
    for image_id, images in by_id.items():
        if len(images) > 1:
            names = ", ".join(str(image.get("file_name")) for image in images)
            file_problems.append(f"image id {image_id} is given to {len(images)} images: {names}")
    for name, ids in by_name.items():
        if len(ids) > 1:
            file_problems.append(f"file name {name} is listed {len(ids)} times (image ids {ids})")
    per_image: dict[Any, list[Problem]] = defaultdict(list)
    unknown = []
    for anno in annotations or []:
        images = by_id.get(anno.get("image_id"))
        if not images:
            unknown.append(anno.get("id"))
            continue
        why = annotation_problem(anno, images[0].get("height"), images[0].get("width"))
        if why is not None:
            per_image[anno["image_id"]].append((anno.get("id"), why))
    if unknown:
        file_problems.append(f"annotation ids {unknown[:10]} refer to image ids not in 'images'")
    return file_problems, dict(per_image)


def _cache_path(
    cache_dir: str, json_file: Optional[str], dicts: list[dict[str, Any]], encoding: Optional[LabelEncoding]
) -> Optional[str]:
    """The cache file of these records: keyed by the checks' version, the annotation file, the label
    encoding and every file the records name (path, size, mtime)."""
    key = hashlib.sha1(f"{_CHECKS_VERSION}|{encoding!r}".encode())
    if json_file:
        try:
            st = os.stat(json_file)
        except OSError:
            return None
        key.update(f"|{os.path.abspath(json_file)}|{st.st_size}|{st.st_mtime_ns}".encode())
    for record in dicts:
        for field, path in record.items():
            if not field.endswith("file_name"):
                continue
            try:
                st = os.stat(path)
                key.update(f"|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
            except (OSError, TypeError):
                key.update(f"|{path}|-".encode())
    return os.path.join(cache_dir, key.hexdigest() + ".json")


def _find_problems(
    dicts: list[dict[str, Any]], name: str, json_file: Optional[str], encoding: Optional[LabelEncoding]
) -> tuple[list[str], dict[str, list[Problem]]]:
    problems: dict[str, list[Problem]] = {}
    for record in tqdm(dicts, desc=f"Validating {name}", unit="img", mininterval=1.0):
        found = _record_problems(record, encoding)
        if found:
            problems[record["file_name"]] = found
    file_problems: list[str] = []
    if json_file and os.path.isfile(json_file):
        with open(json_file, encoding="utf-8") as f:
            file_problems, per_image = coco_file_problems(json.load(f))
        file_names = {r.get("image_id"): r["file_name"] for r in dicts}
        for image_id, found in per_image.items():
            if image_id in file_names:
                known = problems.setdefault(file_names[image_id], [])
                known += [p for p in found if p not in known]
    return file_problems, problems


def validate_dataset(
    dicts: list[dict[str, Any]],
    name: str,
    *,
    json_file: Optional[str] = None,
    drop_invalid: bool = False,
    drop_annotations: bool = True,
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
        drop_annotations: False: bad annotations are not dropped but raise
            (a test split, whose evaluator reads the annotation file as written).
        cache_dir: folder of the cache; None or "" disables it.
        label_encoding: the split's label encoding; semantic records (with a
            ``sem_seg_file_name``) are checked with it (``sem_seg_record_problems``).

    Returns:
        The usable records (``dicts`` itself when every record is usable).

    Raises:
        InvalidDatasetError: listing every bad record, when ``drop_invalid`` is False.
    """
    cacheable = cache_dir and (json_file or label_encoding is not None)
    cache = _cache_path(cache_dir, json_file, dicts, label_encoding) if cacheable else None
    cached: Optional[dict[str, Any]] = None
    if cache is not None and os.path.isfile(cache):
        with open(cache, encoding="utf-8") as f:
            cached = json.load(f)
        logger.info("Validation of %s read from the cache %s", name, cache)
    if cached is None:
        file_problems, problems = _find_problems(dicts, name, json_file, label_encoding)
        cached = {"file": file_problems, "records": problems}
        if cache is not None:
            with atomic_write(cache) as f:
                json.dump(cached, f)
    file_problems, problems = cached["file"], cached["records"]
    source = f" (annotation file {json_file})" if json_file else ""
    if file_problems:
        # Not droppable: which image or annotation is meant cannot be told.
        raise InvalidDatasetError(
            f"Dataset '{name}'{source} cannot be used:\n"
            + "\n".join(f"  {why}" for why in file_problems)
            + "\nFix the annotation file (DATASETS.DROP_INVALID does not drop these)."
        )
    if not problems:
        return dicts
    lines, annotation_lines = [], []
    for file_name, found in problems.items():
        for ann_id, why in found:
            what = "image" if ann_id is None else f"annotation id {ann_id}"
            line = f"  {file_name}: {what}: {why}"
            lines.append(line)
            if ann_id is not None:
                annotation_lines.append(line)
    if not drop_invalid:
        raise InvalidDatasetError(
            f"Dataset '{name}' has {len(lines)} bad record(s){source}:\n"
            + "\n".join(lines)
            + "\nFix them, or set DATASETS.DROP_INVALID True to drop them."
        )
    if annotation_lines and not drop_annotations:
        raise InvalidDatasetError(
            f"Dataset '{name}' has {len(annotation_lines)} bad annotation(s){source}:\n"
            + "\n".join(annotation_lines)
            + "\nThe evaluator reads the annotation file as written: fix them there "
            "(DATASETS.DROP_INVALID drops the bad images of a test split, not its annotations)."
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
