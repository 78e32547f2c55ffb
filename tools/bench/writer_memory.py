#!/usr/bin/env python
"""Memory and time of writing the largest object held at a scene's last checkpoint, writer by writer.

Reads ``scenes/<id>/manifest.json``, its ``held.<r>.jsonl`` and ``pieces.bin``
(an interrupted run of tools/predict.py), takes the held merged object with
the largest box, and runs each writer of a final instance on it: area, COCO
RLE, the whole mask, the GeoJSON Feature (to /dev/null) and the overlay on a
2048 px canvas. Before each step the peak (VmHWM) is reset through
/proc/self/clear_refs; the step's figure is its peak above the RSS before it.
``--band-pixels`` is the writers' threshold (tools/predict.py's option): a
value above the object's box pixels measures the whole-mask outline and
contours, the default the band-wise ones.

    OMP_NUM_THREADS=1 python tools/bench/writer_memory.py OUTPUT/scenes/scene_12000 [--band-pixels N]
"""

import score  # noqa: F401, I001  (first: its shims let detectron2 import)
import argparse
import json
import os
import time

import numpy as np
from affine import Affine

from score.predict.geojson import FeatureMaker
from score.predict.predictor import draw_instances
from score.predict.instances import instance_from_record
from score.predict.masks import BAND_PIXELS
from score.predict.spill import PieceStore
from tile_memory import status  # tools/bench/, the folder of this script


def step(name: str, run):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak starts again from the current RSS
    before, start = status("VmRSS"), time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    print(f"{name:>8}: peak +{status('VmHWM') - before} MiB over {before} MiB, {seconds:.1f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="scenes/<id> of an interrupted run")
    parser.add_argument("--band-pixels", type=int, default=BAND_PIXELS, help="the writers' band threshold")
    args = parser.parse_args()
    with open(os.path.join(args.folder, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    largest, size = None, -1
    with open(os.path.join(args.folder, manifest["held"]), encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)["instance"]
            x0, y0, x1, y1 = record["box"]
            if (x1 - x0) * (y1 - y0) > size:
                largest, size = record, (x1 - x0) * (y1 - y0)
    if largest is None:
        raise SystemExit(f"nothing held at the last checkpoint of {args.folder}")
    inst = instance_from_record(largest, PieceStore(os.path.join(args.folder, "pieces.bin")))
    height, width = manifest["height"], manifest["width"]
    print(f"box {inst.box}, {inst.window_count} tiles, RSS {status('VmRSS')} MiB", flush=True)
    print("area", step("area", lambda: inst.area), "px")
    print("RLE", len(step("rle", lambda: inst.to_coco_rle(height, width))["counts"]), "characters")
    step("mask", lambda: int(inst.mask.sum()))
    print(
        f"band pixels {args.band_pixels} (box {(inst.box[2] - inst.box[0]) * (inst.box[3] - inst.box[1])} px)"
    )
    names = ["class"] * (inst.category + 1)
    maker = FeatureMaker(names, transform=Affine.identity(), crs=None, band_pixels=args.band_pixels)

    def feature() -> int:
        with open(os.devnull, "w") as out:
            return sum(out.write(piece) for piece in maker.feature_json(inst))

    print("GeoJSON", step("geojson", feature), "characters")
    scale = 2048 / max(height, width)
    canvas = np.zeros((round(height * scale), round(width * scale), 3), dtype=np.uint8)
    step("overlay", lambda: draw_instances(canvas, [inst], names, scale, args.band_pixels))


if __name__ == "__main__":
    main()
