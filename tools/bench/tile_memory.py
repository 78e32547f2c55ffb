#!/usr/bin/env python
"""Resident memory of the predictor tile by tile on a large scene (the 512 px profile of docs/BENCHMARKS.md).

Loads the predictor as tools/predict.py does, then predicts the first
``--tiles`` windows of a GeoTIFF and, after each forward and after each tile's
instances are taken out, logs the resident memory (VmRSS), its peak so far
(VmHWM) and glibc's arena (``mallinfo2``: bytes obtained with brk, in use,
free, and mmapped). ``--mmap-threshold MIB`` fixes glibc's mmap threshold first
(as ``tools/predict.py`` does with 4), ``--trim`` calls ``malloc_trim(0)`` after
each tile.

    GDAL_CACHEMAX=64 OMP_NUM_THREADS=1 python tools/bench/tile_memory.py --config-file \\
        configs/tiny/score_tiny_isaid.yaml --input scene_12000.tif --tile-size 512 --tiles 25 \\
        --vocab "building,storage tank,ship" --opts MODEL.WEIGHTS tiny.pth
"""

import score  # noqa: F401, I001  (first: its shims let detectron2 import)
import argparse
import ctypes
import time

import numpy as np

from score.config import get_score_cfg
from score.predict.geotiff import GeoTiffReader
from score.predict.predictor import SCOREPredictor
from score.vocabulary import parse_vocabulary
from score.predict.merge import instances_to_scene
from score.predict.windows import tile_windows

_M_MMAP_THRESHOLD = -3


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def status(field: str) -> int:
    """A /proc/self/status memory field, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", required=True, help="a GeoTIFF")
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--tiles", type=int, default=25)
    parser.add_argument("--confidence-threshold", type=float, default=0.25)
    parser.add_argument("--mmap-threshold", type=int, help="MiB")
    parser.add_argument("--trim", action="store_true")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if args.mmap_threshold is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, args.mmap_threshold << 20)

    def log(tag: str) -> None:
        m = libc.mallinfo2()
        arena = f"arena {m.arena >> 20} in use {m.uordblks >> 20} free {m.fordblks >> 20}"
        memory = f"RSS {status('VmRSS')} peak {status('VmHWM')} MiB  {arena} mmap {m.hblkhd >> 20} MiB"
        print(f"{tag:>14}  {memory}", flush=True)

    cfg = get_score_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts + ["MODEL.DEVICE", "cpu"])
    predictor = SCOREPredictor(cfg)
    predictor.set_vocabulary(parse_vocabulary(args.vocab))
    log("loaded")
    start = time.perf_counter()
    with GeoTiffReader(args.input) as reader:
        windows = tile_windows(reader.height, reader.width, args.tile_size, args.tile_size // 4)
        for index, window in enumerate(windows[: args.tiles]):
            instances = predictor(np.ascontiguousarray(reader.read(window)))
            log(f"tile {index} fwd")
            instances_to_scene(instances, window, args.confidence_threshold)
            del instances
            if args.trim:
                libc.malloc_trim(0)
            log(f"tile {index} done")
    print(f"{(time.perf_counter() - start) / args.tiles:.3f} s per tile", flush=True)


if __name__ == "__main__":
    main()
