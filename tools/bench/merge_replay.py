#!/usr/bin/env python
"""Time (and profile) the merging of a scene's tiles alone: tile pieces recorded once, replayed.

``record`` predicts every tile of a GeoTIFF as tools/predict.py does
(SCOREPredictor, 256 px tiles with 64 px overlap unless told) and writes
their pieces to a line file (:func:`score.predict.sharding.predict_tile_part`);
``replay`` feeds them, in tile order, to a :class:`score.predict.merge.TileMerger`
with a :class:`score.predict.spill.PieceStore` (as :class:`score.predict.instances.InstanceSink`
does), prints the time a tile took and a SHA-256 of the merged objects'
records (equal digests: the same merge), and with ``--profile`` the
functions that took the most time (cProfile).

    OMP_NUM_THREADS=1 python tools/bench/merge_replay.py record \\
        --config-file configs/tiny/score_tiny_isaid.yaml --input scene_3000.tif \\
        --vocab "building,storage tank,ship" --confidence-threshold 0 \\
        --parts /tmp/parts3000.jsonl --opts MODEL.WEIGHTS tiny.pth
    OMP_NUM_THREADS=1 python tools/bench/merge_replay.py replay --parts /tmp/parts3000.jsonl \\
        [--profile] [--rows]
"""

import score  # noqa: F401, I001  (first: its shims let detectron2 import)
import argparse
import cProfile
import hashlib
import json
import os
import pstats
import tempfile
import time

from score.predict.instances import InstanceSink, instance_from_record, instance_record
from score.predict.merge import TileMerger
from score.predict.sharding import predict_tile_part
from score.predict.spill import PieceStore
from score.predict.windows import tile_windows


def record(args: argparse.Namespace) -> None:
    from score.config import get_score_cfg
    from score.predict.geotiff import GeoTiffReader
    from score.predict.predictor import SCOREPredictor
    from score.vocabulary import parse_vocabulary

    cfg = get_score_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts + ["MODEL.DEVICE", "cpu"])
    predictor = SCOREPredictor(cfg)
    predictor.set_vocabulary(parse_vocabulary(args.vocab))
    with GeoTiffReader(args.input) as reader, tempfile.TemporaryDirectory() as unused:
        # The sink only turns tile outputs into pieces and records (tile(), encode()): it is never opened.
        sink = InstanceSink(
            unused,
            "replay",
            image_id=args.input,
            height=reader.height,
            width=reader.width,
            class_names=predictor.class_names,
            score_threshold=args.confidence_threshold,
        )
        windows = tile_windows(reader.height, reader.width, args.tile_size, args.tile_overlap)
        key = {"scene": [reader.height, reader.width], "tile": [args.tile_size, args.tile_overlap]}
        start = time.perf_counter()
        predict_tile_part(
            predictor,
            reader,
            windows,
            range(len(windows)),
            args.parts,
            key,
            sink=sink,
            progress=True,
        )
    print(f"{len(windows)} tiles recorded in {time.perf_counter() - start:.1f} s", flush=True)


def replay(args: argparse.Namespace) -> None:
    times = []
    profile = cProfile.Profile()
    with open(args.parts, encoding="utf-8") as f, tempfile.TemporaryDirectory() as folder:
        key = json.loads(f.readline())["key"]
        windows = tile_windows(*key["scene"], *key["tile"])
        merger = TileMerger(match_threshold=args.merge_threshold, store=PieceStore(os.path.join(folder, "p")))
        row_top, row_start = None, 0
        for line in f:  # one tile at a time: a large scene's pieces need not fit in memory
            tile = json.loads(line)
            window = windows[tile["tile"]]
            if args.rows and window[1] != row_top:
                if row_top is not None:
                    _print_row(row_top, times[row_start:], merger)
                row_top, row_start = window[1], len(times)
            pieces = [instance_from_record(r) for r in tile["pieces"]]
            start = time.perf_counter()
            if args.profile:
                profile.enable()
            merger.add(window, pieces)
            if args.profile:
                profile.disable()
            times.append(time.perf_counter() - start)
        if args.rows and row_top is not None:
            _print_row(row_top, times[row_start:], merger)
        merged = merger.finish()
        digest = hashlib.sha256()
        for inst in merged:
            digest.update(json.dumps(instance_record(inst)).encode())
    first, last = times[:20], times[-20:]
    print(
        f"{len(times)} tiles merged in {sum(times):.1f} s ({sum(first) / len(first):.3f} s a tile over the "
        f"first 20, {sum(last) / len(last):.3f} over the last 20); {len(merged)} objects, "
        f"records sha256 {digest.hexdigest()[:16]}",
        flush=True,
    )
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def _print_row(top: int, times: list, merger: TileMerger) -> None:
    held = [inst for _, inst in merger.held]
    longest = max((inst.window_count for inst in held), default=0)
    print(
        f"row at y={top}: {len(times)} tiles, {sum(times):.2f} s ({max(times):.3f} s the slowest); "
        f"{len(held)} held, the longest over {longest} tiles",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="predict the tiles and write their pieces")
    rec.add_argument("--config-file", required=True)
    rec.add_argument("--input", required=True, help="a GeoTIFF")
    rec.add_argument("--vocab", required=True)
    rec.add_argument("--tile-size", type=int, default=256)
    rec.add_argument("--tile-overlap", type=int, default=64)
    rec.add_argument("--confidence-threshold", type=float, default=0.0)
    rec.add_argument("--parts", required=True, help="the line file written")
    rec.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    rep = commands.add_parser("replay", help="merge recorded pieces, timed")
    rep.add_argument("--parts", required=True)
    rep.add_argument("--merge-threshold", type=float, default=0.5)
    rep.add_argument("--profile", action="store_true", help="print cProfile's 25 most costly functions")
    rep.add_argument("--rows", action="store_true", help="print the time of each row of tiles")
    args = parser.parse_args()
    if args.command == "record":
        record(args)
    else:
        replay(args)


if __name__ == "__main__":
    main()
