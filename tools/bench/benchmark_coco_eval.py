"""Time COCO mask-AP backends on synthetic detections (picks ``DEFAULT_BACKEND``).

Builds ``--images`` images of ``--size`` px with ``--objects`` random ellipses
of ``--classes`` classes as ground truth and ``--dets`` detections per image:
shifted and dilated copies of the ground truth plus random blobs, with random
scores. Each backend runs evaluate + accumulate at maxDets (1, 10, dets); the
script prints the seconds of each and the AP each one found.

    python tools/bench/benchmark_coco_eval.py --images 500 --dets 300
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO

import score  # noqa: F401  (detectron2 compatibility shims before detectron2 imports)
from score.evaluation.instance_evaluation import BACKENDS, evaluate_coco, summarize_precision

logger = logging.getLogger("score.benchmark_coco_eval")


def _random_ellipse(rng: np.random.Generator, size: int) -> tuple[float, float, float, float]:
    """(cy, cx, ry, rx) of a random axis-aligned ellipse inside a (size, size) image."""
    cy, cx = rng.uniform(0, size, 2)
    ry, rx = rng.uniform(4, size / 6, 2)
    return cy, cx, ry, rx


def _ellipse_mask(ellipse: tuple[float, float, float, float], size: int) -> np.ndarray:
    """(size, size) uint8 mask of an ellipse, computed in its bounding window only."""
    cy, cx, ry, rx = ellipse
    y0, y1 = min(max(int(cy - ry), 0), size), min(max(int(cy + ry) + 1, 0), size)
    x0, x1 = min(max(int(cx - rx), 0), size), min(max(int(cx + rx) + 1, 0), size)
    y, x = np.ogrid[y0:y1, x0:x1]
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y0:y1, x0:x1] = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    return mask


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def make_synthetic(
    *, images: int, dets: int, objects: int, classes: int, size: int, seed: int
) -> tuple[COCO, list[dict]]:
    """Ground truth as a pycocotools COCO and detections in COCO result format."""
    rng = np.random.default_rng(seed)
    dataset = {
        "images": [
            {"id": i + 1, "width": size, "height": size, "file_name": f"{i}.png"} for i in range(images)
        ],
        "categories": [{"id": c + 1, "name": f"class{c}"} for c in range(classes)],
        "annotations": [],
    }
    results = []
    for image_id in range(1, images + 1):
        gts = []
        for _ in range(objects):
            ellipse = _random_ellipse(rng, size)
            mask = _ellipse_mask(ellipse, size)
            if not mask.any():
                continue
            category = int(rng.integers(1, classes + 1))
            rle = _rle(mask)
            dataset["annotations"].append(
                {
                    "id": len(dataset["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "area": float(mask_util.area(rle)),
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
            gts.append((ellipse, category))
        for d in range(dets):
            if d < 3 * len(gts):  # shifted, resized copies of the ground truth, some with the wrong class
                (cy, cx, ry, rx), category = gts[d % len(gts)]
                dy, dx = rng.uniform(-3, 3, 2)
                ellipse = (cy + dy, cx + dx, ry * rng.uniform(0.8, 1.2), rx * rng.uniform(0.8, 1.2))
                if rng.random() < 0.3:
                    category = int(rng.integers(1, classes + 1))
            else:
                ellipse, category = _random_ellipse(rng, size), int(rng.integers(1, classes + 1))
            rle = _rle(_ellipse_mask(ellipse, size))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "score": float(rng.random()),
                }
            )
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco, results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--dets", type=int, default=300, help="detections per image (and maxDets)")
    parser.add_argument("--objects", type=int, default=10, help="ground-truth objects per image")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=512, help="image side (px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="+", default=[b for b in BACKENDS if b != "detectron2"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    tic = time.perf_counter()
    coco_gt, results = make_synthetic(
        images=args.images,
        dets=args.dets,
        objects=args.objects,
        classes=args.classes,
        size=args.size,
        seed=args.seed,
    )
    logger.info(
        "%d images, %d detections, %d ground-truth masks (built in %.1f s)",
        args.images,
        len(results),
        len(coco_gt.anns),
        time.perf_counter() - tic,
    )
    names = [c["name"] for c in coco_gt.dataset["categories"]]
    for backend in args.backends:
        tic = time.perf_counter()
        coco_eval = evaluate_coco(coco_gt, results, max_dets_per_image=args.dets, backend=backend)
        seconds = time.perf_counter() - tic
        ap = summarize_precision(coco_eval, names)["AP"]
        logger.info("%-18s %8.2f s   AP %.4f", backend, seconds, ap)


if __name__ == "__main__":
    main()
