#!/usr/bin/env python
"""Predict with a trained SCORE model on your own pictures and scenes, with your own class names.

    python tools/predict.py --config-file configs/score_isaid_instance.yaml \\
        --input photos/ scene.tif "more/*.png" --output out/ \\
        --vocab "ship,storage tank,harbor" --opts MODEL.WEIGHTS model_final.pth

Writes, under --output:
  predictions.json          COCO detections of the run: "images", "categories"
                            (1-based ids, the vocabulary), "annotations" (RLE
                            mask, [x, y, w, h] box, score, category_id)
  visualizations/<id>.jpg   the instances drawn on each image (large scenes downscaled)
  geojson/<id>.geojson      one Feature per instance, for georeferenced (Geo)TIFFs
  geojson/<id>.geojsonl     the same Features, one per line, streamed as tile rows finish
  scenes/<id>/              streamed COCO results, per-tile progress and the resume manifest
  classmaps/<id>.png, .tif   class maps of --task semantic (docs/PREDICT.md, "Class maps")

A scene's results are written as its rows of tiles finish (memory bounded by
the rows, not by the detections) and an interrupted run continues from the
last finished row (--resume). Under torchrun the scenes, or the tile rows of
each scene (--shard), are shared out over the processes.

Images larger than the model's test size (the test resize would shrink them
more than 2x) go through tiled inference (--tiling auto; see docs/PREDICT.md).
An image that cannot be read is reported with its file name and skipped; the
others are still processed and the exit status is 1 at the end. Usage errors
(--opts not last, no MODEL.WEIGHTS without --allow-untrained, a bad
vocabulary or output folder) exit with status 2 before the model is built.
A scene without any valid pixel (all nodata, masked or NaN) is skipped with a
warning and does not change the exit status. Finished results of another run (other
model, vocabulary, config, settings or scene) in --output are never replaced
without --overwrite: the run is refused before anything is written.
"""

import score  # noqa: F401, I001  (first: its shims let detectron2 import on numpy>=1.24, Pillow>=10)
import argparse
import ctypes
import glob
import functools
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import time
from datetime import timedelta
from typing import List, Optional, Tuple

import cv2
import numpy as np
import rasterio
import torch
import torch.distributed as dist
from affine import Affine
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from score.config import get_score_cfg
from score.data.image_io import read_image_uint8
from score.engine import adapt_cfg_to_device
from score.predict.classmap import ClassMapSink
from score.predict.geojson import FeatureMaker
from score.predict.geotiff import GEO_SUFFIXES, GeoTiffReader
from score.predict.instances import InstanceSink, write_coco_results
from score.predict.masks import BAND_PIXELS
from score.predict.predictor import SCOREPredictor
from score.predict.scene import (
    SceneEngine,
    file_digest,
    key_differences,
    predict_tiles,
    read_manifest,
    scene_folder,
    state_dict_digest,
)
from score.predict.sharding import part_path, predict_tile_part, rank_tiles, stream_from_parts
from score.predict.windows import ArrayReader, Box, tile_windows
from score.vocabulary import display_name, first_synonym, parse_vocabulary

logger = logging.getLogger("score.predict")

# mallopt's parameter number for the mmap threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp") + GEO_SUFFIXES


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="SCORE config (yaml)")
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, folders (their images) or glob patterns"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab", help='class names separated by commas: "ship,storage tank,harbor"')
    vocab.add_argument(
        "--vocab-file", metavar="FILE", help="one class per line; synonyms of a class separated by commas"
    )
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score kept")
    parser.add_argument(
        "--tiling",
        choices=["auto", "always", "never"],
        default="auto",
        help="sliding-window inference: auto = when the test resize would shrink the image more than 2x",
    )
    parser.add_argument("--tile-size", type=int, help="tile side in px (default INPUT.MIN_SIZE_TEST)")
    parser.add_argument("--tile-overlap", type=int, help="overlap of tiles in px (default tile/4)")
    parser.add_argument(
        "--merge-threshold", type=float, default=0.5, help="overlap/contact ratio joining pieces across tiles"
    )
    parser.add_argument("--bands", type=int, nargs=3, metavar="B", help="GeoTIFF bands read as R G B")
    parser.add_argument(
        "--scaling",
        choices=["percentile", "dtype"],
        default="percentile",
        help="images of more than 8 bits per channel (GeoTIFF, 16-bit PNG) to 8 bit",
    )
    parser.add_argument(
        "--geojson-crs",
        choices=["raster", "wgs84"],
        default="raster",
        help="GeoJSON coordinates in the raster's CRS (with a 'crs' member) or WGS84 (RFC 7946)",
    )
    parser.add_argument(
        "--pixel-geojson",
        action="store_true",
        help="for a TIFF without a CRS, write GeoJSON in pixel coordinates (x = column, y = row)",
    )
    parser.add_argument(
        "--band-pixels",
        type=int,
        default=BAND_PIXELS,
        metavar="N",
        help="objects whose box holds more pixels get their GeoJSON outline and overlay contours from bands "
        f"of at most N pixels (a MultiPolygon of the bands' parts; default {BAND_PIXELS})",
    )
    parser.add_argument("--vis-max-size", type=int, default=2048, help="longest side of the overlay pictures")
    parser.add_argument("--no-vis", action="store_true", help="do not write overlay pictures")
    parser.add_argument(
        "--shard",
        choices=["auto", "scenes", "rows"],
        default="auto",
        help="under torchrun: give each process whole scenes, or rows of tiles of every scene "
        "(auto: scenes when there are at least as many as processes)",
    )
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_const",
        const="always",
        default="auto",
        help="continue interrupted scenes; a partial output of another scene, model or vocabulary is an "
        "error (default: continue when it matches, start the scene over when it does not)",
    )
    resume.add_argument(
        "--no-resume", dest="resume", action="store_const", const="never", help="start every scene over"
    )
    add_semantic_arguments(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace finished results of another run (other model, vocabulary, config, settings or scene) "
        "in --output; without it such a folder is refused before anything is written",
    )
    parser.add_argument(
        "--allow-untrained",
        action="store_true",
        help="predict without MODEL.WEIGHTS, with the model's random initialisation (tests, timings)",
    )
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (last option)"
    )
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line; a usage error (exit 2) when --opts is not last or not KEY VALUE pairs."""
    parser = get_parser()
    args = parser.parse_args(argv)
    misplaced = [o for o in args.opts if o.split("=")[0] in parser._option_string_actions]
    if misplaced:
        parser.error(
            f"--opts must come last: it takes everything after it as KEY VALUE config overrides, and "
            f"{' '.join(misplaced)} came after it. Move {' '.join(misplaced)} before --opts"
        )
    if len(args.opts) % 2:
        parser.error(f"--opts takes KEY VALUE pairs; got an odd number of words: {args.opts}")
    return args


def check_weights(args: argparse.Namespace, cfg) -> None:
    """No MODEL.WEIGHTS is a usage error, unless --allow-untrained or the config asks for random weights."""
    if cfg.MODEL.WEIGHTS or args.allow_untrained or cfg.MODEL.SCORE.RANDOM_INIT_CLIP:
        return
    raise ValueError(
        f"no MODEL.WEIGHTS in {args.config_file} or --opts: the predictions would be those of an untrained "
        "model. Give the trained checkpoint with --opts MODEL.WEIGHTS path/to/model_final.pth, or "
        "--allow-untrained to predict with random weights on purpose"
    )


def add_semantic_arguments(parser: argparse.ArgumentParser) -> None:
    """The task, and the options of class maps (the semantic task)."""
    parser.add_argument(
        "--task",
        choices=["semantic", "instance"],
        help="instance segmentation or a class map; default: the config's MODEL.MASK_FORMER.TEST keys "
        "(instance when INSTANCE_ON, semantic when only SEMANTIC_ON)",
    )
    group = parser.add_argument_group("class maps (--task semantic)")
    group.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        metavar="P",
        help="pixels whose winning class score is below P become no data (255)",
    )
    group.add_argument(
        "--confidence", action="store_true", help="also write the winning class score (float32 GeoTIFF)"
    )
    group.add_argument("--vectorize", action="store_true", help="also write the classes as GeoJSON polygons")
    group.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        metavar="TOL",
        help="--vectorize: simplify polygon outlines (TOL in px)",
    )
    group.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        metavar="PX",
        help="--vectorize: leave out polygons of fewer pixels",
    )
    group.add_argument("--cog", action="store_true", help="write the GeoTIFFs as Cloud-Optimized GeoTIFFs")


def find_images(patterns: List[str]) -> List[str]:
    """Files named, images of named folders (sorted, not recursive), matches of glob patterns."""
    found: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            names = sorted(os.listdir(pattern))
            found += [os.path.join(pattern, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
        elif os.path.exists(pattern):
            found.append(pattern)
        else:
            matches = sorted(glob.glob(os.path.expanduser(pattern)))
            if not matches:
                raise FileNotFoundError(
                    f"--input {pattern!r}: no such file or folder, and no file matches it"
                )
            found += [m for m in matches if os.path.isfile(m)]
    unique = list(dict.fromkeys(os.path.normpath(p) for p in found))
    if not unique:
        raise FileNotFoundError(f"--input {patterns}: no image found")
    return unique


def image_ids(paths: List[str]) -> List[str]:
    """File names, or paths relative to the common folder when two files share a name."""
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    root = os.path.commonpath([os.path.abspath(p) for p in paths])
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def open_scene(path: str, args: argparse.Namespace):
    """A reader of the image: GeoTiffReader for (Geo)TIFFs, ArrayReader (whole image in memory) otherwise.

    Pictures with more than 8 bits per channel (16-bit PNG) get the TIFFs' --scaling stretch.
    """
    if path.lower().endswith(GEO_SUFFIXES):
        return GeoTiffReader(path, bands=args.bands, scaling=args.scaling)
    try:
        return ArrayReader(read_image_uint8(path, "RGB", scaling=args.scaling))
    except (OSError, ValueError) as error:
        raise OSError(f"cannot read image {path}: {error}") from error


def preview(reader, max_side: int) -> Tuple[np.ndarray, float]:
    """The scene downscaled to at most ``max_side`` px a side, and the scale."""
    if hasattr(reader, "read_preview"):
        return reader.read_preview(max_side)
    image = reader.image
    scale = min(1.0, max_side / max(reader.height, reader.width))
    if scale < 1.0:
        size = (max(1, round(reader.width * scale)), max(1, round(reader.height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, scale


def needs_tiling(height: int, width: int, min_size: int, max_size: int) -> bool:
    """Whether the test resize (shortest edge to ``min_size``, longest at most ``max_size``) shrinks > 2x."""
    return min(min_size / min(height, width), max_size / max(height, width)) < 0.5


def tile_side(args: argparse.Namespace, cfg) -> int:
    """The side of the tiles in px (--tile-size, default the test size)."""
    return args.tile_size or cfg.INPUT.MIN_SIZE_TEST


def tile_overlap(args: argparse.Namespace, cfg) -> int:
    """The overlap of the tiles in px (--tile-overlap, default a quarter of the tile side)."""
    return tile_side(args, cfg) // 4 if args.tile_overlap is None else args.tile_overlap


def scene_windows(reader, args, cfg) -> Tuple[List[Box], bool]:
    """The tile windows of a scene (one window when it is not tiled), and whether it is tiled."""
    tiled = args.tiling == "always" or (
        args.tiling == "auto"
        and needs_tiling(reader.height, reader.width, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    )
    if not tiled:
        return [(0, 0, reader.width, reader.height)], False
    return tile_windows(reader.height, reader.width, tile_side(args, cfg), tile_overlap(args, cfg)), True


def output_stem(image_id: str) -> str:
    return os.path.splitext(image_id)[0].replace(os.sep, "__")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_key(args: argparse.Namespace, cfg, predictor: SCOREPredictor) -> dict:
    """What every scene's output of this run depends on besides the scene: model, vocabulary, settings.

    The model is the digest of the MODEL.WEIGHTS file, else of the model's state dict (random weights).
    """
    weights = cfg.MODEL.WEIGHTS
    model_digest = file_digest(weights) if os.path.isfile(weights) else state_dict_digest(predictor.model)
    class_names = predictor.class_names
    settings = {
        "confidence_threshold": args.confidence_threshold,
        "merge_threshold": args.merge_threshold,
        "bands": args.bands,
        "scaling": args.scaling,
        "geojson_crs": args.geojson_crs,
        "pixel_geojson": args.pixel_geojson,
        "overlay": None if args.no_vis else args.vis_max_size,
        "band_pixels": args.band_pixels,
    }
    return {
        "model": model_digest,
        "vocabulary": class_names,
        "config": hashlib.sha256(cfg.dump().encode()).hexdigest(),
        "settings": settings,
    }


def instance_sink(reader, image_id: str, args, class_names, *, features=None, canvas=None) -> InstanceSink:
    """What is done with the tiles of one scene: instances merged, written as COCO lines, GeoJSON, overlay."""
    return InstanceSink(
        args.output,
        output_stem(image_id),
        image_id=image_id,
        height=reader.height,
        width=reader.width,
        class_names=class_names,
        score_threshold=args.confidence_threshold,
        match_threshold=args.merge_threshold,
        features=features,
        canvas=canvas,
        band_pixels=args.band_pixels,
        valid=getattr(reader, "valid", None),
    )


def open_engine(reader, path: str, image_id: str, windows: List[Box], args, class_names, key: dict):
    """The engine of one scene with its instance sink (it resumes a partial output with the same key)."""
    features = None
    if isinstance(reader, GeoTiffReader):
        if reader.georeferenced or args.pixel_geojson:
            features = FeatureMaker(
                [display_name(n) for n in class_names],
                transform=reader.transform if reader.georeferenced else Affine.identity(),
                crs=reader.crs,
                to_wgs84=reader.georeferenced and args.geojson_crs == "wgs84",
                image=path,
                band_pixels=args.band_pixels,
            )
        else:
            logger.warning(
                "%s has no CRS: no GeoJSON written for it (its coordinates would be pixels); "
                "--pixel-geojson writes them in pixel coordinates",
                path,
            )
    canvas = None if args.no_vis else (lambda: preview(reader, args.vis_max_size))
    sink = instance_sink(reader, image_id, args, class_names, features=features, canvas=canvas)
    return SceneEngine(
        args.output,
        output_stem(image_id),
        sink=sink,
        image_id=image_id,
        height=reader.height,
        width=reader.width,
        windows=windows,
        key=key,
        resume=args.resume,
        overwrite=args.overwrite,
        file_name=path,
    )


def predict_rows_sharded(predictor, reader, path, image_id, windows, args, key: dict, tiled: bool):
    """One scene whose tile rows are shared out over the ranks; rank 0 merges them. Its engine on rank 0."""
    rank, world = comm.get_rank(), comm.get_world_size()
    stem = output_stem(image_id)
    error = None
    if not SceneEngine.is_done(args.output, stem, key):
        try:
            tiles = rank_tiles(windows, rank, world)
            part = part_path(args.output, stem, rank, world)
            predict_tile_part(
                predictor,
                reader,
                windows,
                tiles,
                part,
                key,
                # Only its tile() and encode() are used: no output is opened.
                sink=instance_sink(reader, image_id, args, predictor.class_names),
                progress=tiled and rank == 0,
            )
        except OSError as failure:  # a damaged block of a large raster
            error = f"rank {rank}: {failure}"
    errors = [e for e in comm.all_gather(error) if e is not None]  # also waits for every rank's part
    if errors:
        raise OSError(f"{path}: " + "; ".join(errors))
    if rank != 0:
        return None
    engine = open_engine(reader, path, image_id, windows, args, predictor.class_names, key)
    parts = [part_path(args.output, stem, k, world) for k in range(world)]
    stream_from_parts(engine, parts)
    for part in parts:
        if os.path.exists(part):
            os.remove(part)
    return engine


def process_image(predictor, reader, path: str, image_id: str, args: argparse.Namespace, cfg, key: dict):
    """Predict on one opened scene, streaming its COCO results, GeoJSON and overlay.

    Returns its engine (None on ranks other than 0 when tile rows are sharded).
    """
    start = time.perf_counter()
    windows, tiled = scene_windows(reader, args, cfg)
    key = scene_key(path, windows, key)
    if args.shard == "rows" and comm.get_world_size() > 1:
        engine = predict_rows_sharded(predictor, reader, path, image_id, windows, args, key, tiled)
        if engine is None:
            return None
    else:
        engine = open_engine(reader, path, image_id, windows, args, predictor.class_names, key)
        progress = tiled and comm.get_rank() == 0
        predict_tiles(predictor, reader, engine, progress=progress)
    sink = engine.sink
    if not sink.detections:
        if sink.best_score is None:
            logger.warning("%s: the model found nothing at all", image_id)
        else:
            logger.warning(
                "%s: no instance at --confidence-threshold %g; the best score seen was %.3f: "
                "lower it with --confidence-threshold",
                image_id,
                args.confidence_threshold,
                sink.best_score,
            )
    message = "%s: %d x %d px, %d instances, done in %.1f s"
    values = [image_id, reader.width, reader.height, sink.detections, time.perf_counter() - start]
    if tiled:
        message += " (tiled: %d tiles, %d tile detections before merging); peak resident memory %.0f MiB"
        values += [len(windows), sink.tile_detections, peak_rss_mib()]
    logger.info(message, *values)
    return engine


# A scene's file is hashed once a run, also when the check of finished results hashed it first.
scene_digest = functools.lru_cache(maxsize=None)(file_digest)

# The members of a scene's key that the run gives (the others, "scene" and "windows", are the scene's).
RUN_MEMBERS = ("model", "vocabulary", "config", "settings")


def scene_key(path: str, windows: List[Box], key: dict) -> dict:
    """The key of one scene's output: its content and tile windows, and the run's ``key``."""
    return {
        "scene": scene_digest(path),
        "windows": hashlib.sha256(json.dumps(windows).encode()).hexdigest(),
        **key,
    }


def same_run(manifest: dict, key: dict) -> bool:
    """Whether a scene's manifest is of a run with this model, vocabulary, config and settings."""
    return all(manifest["key"].get(k) == json.loads(json.dumps(key[k])) for k in RUN_MEMBERS)


def finished_elsewhere(
    paths: List[str], ids: List[str], args: argparse.Namespace, cfg, key: dict
) -> List[str]:
    """Messages naming each finished result in --output that this run would replace (read-only).

    A scene of the inputs is replaced when its finished output has another key
    (its content or tiling changed too); a finished scene of no input when it is
    of another run, whose predictions.json this run would rewrite. Under --resume
    a partial output of an input with another key is named too.
    """
    conflicts = []
    stems = {output_stem(i): (p, i) for p, i in zip(paths, ids)}
    root = os.path.join(args.output, "scenes")
    for stem in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        manifest = read_manifest(args.output, stem)
        if manifest is None:
            continue
        partial = not manifest.get("complete")
        if partial and not (stem in stems and args.resume == "always"):
            continue
        if stem in stems:
            path = stems[stem][0]
            try:
                reader = open_scene(path, args)
            except (OSError, ValueError):
                continue  # reported and skipped when its turn comes; its output is left alone
            try:
                windows, _ = scene_windows(reader, args, cfg)
            finally:
                if isinstance(reader, GeoTiffReader):
                    reader.close()
            new = scene_key(path, windows, key)
        elif not same_run(manifest, key):
            new = key
        else:
            continue
        old = manifest["key"] if stem in stems else {k: manifest["key"].get(k) for k in RUN_MEMBERS}
        differ = key_differences(old, json.loads(json.dumps(new)))
        if differ:
            what = (
                "a partial output (--resume continues only this run's)" if partial else "the complete output"
            )
            conflicts.append(
                f"{scene_folder(args.output, stem)} holds {what} of another run "
                f"(different {', '.join(differ)})"
            )
    return conflicts


def earlier_scenes(args: argparse.Namespace, key: dict, done_ids: set) -> List[Tuple[dict, str]]:
    """The finished scenes in --output of this run's model, vocabulary, config and settings that this run
    did not predict: (COCO image entry, detections file), for predictions.json."""
    root = os.path.join(args.output, "scenes")
    found = []
    for stem in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        manifest = read_manifest(args.output, stem)
        if manifest is None or not manifest.get("complete") or not same_run(manifest, key):
            continue
        if manifest["image_id"] in done_ids:
            continue
        image = {
            "id": manifest["image_id"],
            "file_name": manifest.get("file_name") or manifest["image_id"],
            "height": manifest["height"],
            "width": manifest["width"],
        }
        found.append((image, os.path.join(scene_folder(args.output, stem), "detections.jsonl")))
    return found


def discard_unstarted(output: str, stem: str) -> None:
    """Remove what a failed scene left when it was new to --output and no row of tiles was finished."""
    manifest = read_manifest(output, stem)
    if manifest is not None and manifest.get("rows_done", 0) > 0:
        return  # resumable with --resume
    shutil.rmtree(scene_folder(output, stem), ignore_errors=True)
    features = os.path.join(output, "geojson", stem + ".geojsonl")
    if os.path.isfile(features):
        os.remove(features)


def check_args(args: argparse.Namespace) -> None:
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ValueError(f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}")
    if args.tile_size is not None and args.tile_size <= 0:
        raise ValueError(f"--tile-size must be positive, got {args.tile_size}")
    if args.tile_overlap is not None and not 0 <= args.tile_overlap < (args.tile_size or 2**31):
        raise ValueError(f"--tile-overlap must be in [0, tile size), got {args.tile_overlap}")
    if args.band_pixels <= 0:
        raise ValueError(f"--band-pixels must be positive, got {args.band_pixels}")


def check_output(args: argparse.Namespace) -> None:
    """Create --output and check that every path written under it can be written (before the model loads)."""
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise NotADirectoryError(f"--output {args.output} is an existing file, not a folder")
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as error:
        raise OSError(f"--output {args.output}: cannot create the folder ({error.strerror})") from error
    if not os.access(args.output, os.W_OK | os.X_OK):
        raise PermissionError(f"--output {args.output}: the folder is not writable")
    folders = ["geojson", "scenes"] + ([] if args.no_vis else ["visualizations"])
    for name in folders:
        path = os.path.join(args.output, name)
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(f"{path} is an existing file; the {name} are written in a folder there")
    results = os.path.join(args.output, "predictions.json")
    if os.path.isdir(results):
        raise IsADirectoryError(f"{results} is a folder; the COCO results are written to a file there")


def bound_malloc_cache(threshold: int = 4 << 20) -> bool:
    """glibc only: allocations of ``threshold`` bytes and more go to mmap, returned to the system when freed.

    glibc starts at 128 KiB and raises its threshold up to 32 MiB as large
    blocks are freed; the model's per-tile temporaries then come from the heap
    and the freed ones stay resident. On 512 px tiles of the tiny model this
    fixed 4 MiB threshold lowered the peak from 137 to 105 MiB above the loaded
    model (docs/PREDICT.md). A ``MALLOC_MMAP_THRESHOLD_`` set by the user is kept.
    Whether the threshold was set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc
        logger.info("No glibc mallopt: the allocator's mmap threshold is left as it is")
        return False


# The semantic task: class maps -------------------------------------------------------------------------

# Options that only make sense for class maps (a usage error with --task instance), and their defaults.
SEMANTIC_OPTIONS = {
    "min_confidence": 0.0,
    "confidence": False,
    "vectorize": False,
    "simplify": 0.0,
    "min_area": 0.0,
    "cog": False,
}


def choose_task(args: argparse.Namespace, cfg) -> None:
    """Set ``args.task`` (given, or from the config's task keys) and check the class-map options.

    The semantic task turns SEMANTIC_ON on and INSTANCE_ON off in ``cfg`` (not frozen yet).
    """
    test = cfg.MODEL.MASK_FORMER.TEST
    if args.task is None:
        args.task = "semantic" if test.SEMANTIC_ON and not test.INSTANCE_ON else "instance"
    if args.task == "instance":
        given = [
            "--" + name.replace("_", "-")
            for name, default in SEMANTIC_OPTIONS.items()
            if getattr(args, name) != default
        ]
        if given:
            raise ValueError(f"{', '.join(given)}: options of class maps, which need --task semantic")
        return
    if not 0.0 <= args.min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    for name in ("simplify", "min_area"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
        if getattr(args, name) and not args.vectorize:
            raise ValueError(f"--{name.replace('_', '-')}: an option of the polygons, which need --vectorize")
    if args.cog:
        with rasterio.Env() as env:
            if "COG" not in env.drivers():
                raise ValueError("--cog: this GDAL has no COG driver (GDAL >= 3.1 has it)")
    test.SEMANTIC_ON, test.INSTANCE_ON = True, False


def check_semantic_output(args: argparse.Namespace) -> None:
    """The class maps' folder can be made under --output (before the model loads)."""
    path = os.path.join(args.output, "classmaps")
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path} is an existing file; the class maps are written in a folder there")


def class_map_sink(reader, image_id: str, args, cfg, class_names, windows, *, canvas=None) -> ClassMapSink:
    """What is done with the tiles (``windows``) of one scene for a class map (GeoTIFF outputs for a TIFF)."""
    geotiff = isinstance(reader, GeoTiffReader)
    vectorize = {"simplify": args.simplify, "min_area": args.min_area} if args.vectorize else None
    return ClassMapSink(
        args.output,
        output_stem(image_id),
        image_id=image_id,
        height=reader.height,
        width=reader.width,
        windows=windows,
        class_names=class_names,
        overlap=tile_overlap(args, cfg),
        reader=reader,
        transform=reader.transform if geotiff else None,
        crs=reader.crs if geotiff else None,
        geotiff=geotiff,
        min_confidence=args.min_confidence,
        confidence=args.confidence,
        cog=args.cog,
        vectorize=vectorize,
        canvas=canvas,
    )


def process_semantic(predictor, reader, path: str, image_id: str, args, cfg, key: dict):
    """The class map of one opened scene; its engine (None on ranks other than 0 when rows are sharded)."""
    start = time.perf_counter()
    windows, tiled = scene_windows(reader, args, cfg)
    key = {
        "scene": file_digest(path),
        "windows": hashlib.sha256(json.dumps(windows).encode()).hexdigest(),
        **key,
    }
    stem, names = output_stem(image_id), predictor.class_names
    rank, world = comm.get_rank(), comm.get_world_size()
    if args.shard == "rows" and world > 1:
        error = None
        if not SceneEngine.is_done(args.output, stem, key):
            try:
                sink = class_map_sink(reader, image_id, args, cfg, names, windows)  # only tile(), encode()
                tiles = rank_tiles(windows, rank, world)
                part = part_path(args.output, stem, rank, world)
                progress = tiled and rank == 0
                predict_tile_part(
                    predictor.semantic, reader, windows, tiles, part, key, sink=sink, progress=progress
                )
            except OSError as failure:
                error = f"rank {rank}: {failure}"
        errors = [e for e in comm.all_gather(error) if e is not None]
        if errors:
            raise OSError(f"{path}: " + "; ".join(errors))
        if rank != 0:
            return None
    canvas = None if args.no_vis else (lambda: preview(reader, args.vis_max_size))
    engine = SceneEngine(
        args.output,
        stem,
        sink=class_map_sink(reader, image_id, args, cfg, names, windows, canvas=canvas),
        image_id=image_id,
        height=reader.height,
        width=reader.width,
        windows=windows,
        key=key,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if args.shard == "rows" and world > 1:
        parts = [part_path(args.output, stem, k, world) for k in range(world)]
        stream_from_parts(engine, parts)
        for part in parts:
            if os.path.exists(part):
                os.remove(part)
    else:
        predict_tiles(predictor.semantic, reader, engine, progress=tiled and rank == 0)
    message = "%s: %d x %d px class map in %.1f s"
    values = [image_id, reader.width, reader.height, time.perf_counter() - start]
    if tiled:
        message += " (tiled: %d tiles); peak resident memory %.0f MiB"
        values += [len(windows), peak_rss_mib()]
    logger.info(message, *values)
    return engine


def run_semantic(predictor, cfg, args: argparse.Namespace, paths: List[str]) -> int:
    """Class maps of every input (see docs/PREDICT.md); 0, or 1 when some images could not be processed."""
    class_names = predictor.class_names
    logger.info(
        "%d image(s); class maps of %d classes: %s; peak resident memory after loading the model %.0f MiB",
        len(paths),
        len(class_names),
        class_names,
        peak_rss_mib(),
    )
    key = run_key(args, cfg, predictor)
    key["settings"] = {
        "task": "semantic",
        "bands": args.bands,
        "scaling": args.scaling,
        "overlay": None if args.no_vis else args.vis_max_size,
        **{name: getattr(args, name) for name in SEMANTIC_OPTIONS},
    }
    rank, world = comm.get_rank(), comm.get_world_size()
    items = list(zip(paths, image_ids(paths)))
    if args.shard == "scenes" and world > 1:
        items = items[rank::world]
    failed = []
    for path, image_id in tqdm(items, desc="images", unit="image", disable=rank != 0):
        try:
            reader = open_scene(path, args)
        except (OSError, ValueError) as error:
            logger.error("%s", error)
            failed.append(path)
            continue
        try:
            process_semantic(predictor, reader, path, image_id, args, cfg, key)
        except (OSError, ValueError) as error:
            logger.error("%s", error)
            failed.append(path)
        finally:
            if isinstance(reader, GeoTiffReader):
                reader.close()
    if world > 1:
        failed = [p for part in comm.all_gather(failed) for p in part]
    comm.synchronize()
    if failed:
        logger.error("%d image(s) could not be processed: %s", len(failed), failed)
        return 1
    logger.info("Class maps written to %s", os.path.join(args.output, "classmaps"))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; 0 on success, 1 when some images could not be read, 2 on a usage error."""
    args = parse_args(argv)
    # GDAL's block cache defaults to 5 % of the RAM (1.2 GB of 24 GB) and fills as the windows of a large
    # scene are read; tiles go row by row, so only the blocks of about one row of tiles are read again.
    os.environ.setdefault("GDAL_CACHEMAX", "32")  # MB; a value the user set is kept
    bound_malloc_cache()
    try:
        check_args(args)
        cfg = get_score_cfg()
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        choose_task(args, cfg)
        cfg.freeze()
        check_weights(args, cfg)
        cfg = adapt_cfg_to_device(cfg)
        given = args.vocab is not None or args.vocab_file is not None
        vocabulary = parse_vocabulary(args.vocab, args.vocab_file) if given else None
        paths = find_images(args.input)
        check_output(args)
        if args.task == "semantic":
            check_semantic_output(args)
        init_distributed(args, len(paths))
        predictor = SCOREPredictor(cfg)
    except (ValueError, OSError) as error:
        logger.error("%s", error)
        return 2
    if vocabulary is not None:
        predictor.set_vocabulary(vocabulary)
    else:
        logger.info("No --vocab or --vocab-file: using the config's test vocabulary")
    class_names = predictor.class_names
    if args.task == "semantic":
        return run_semantic(predictor, cfg, args, paths)
    logger.info(
        "%d image(s); vocabulary of %d classes: %s; peak resident memory after loading the model %.0f MiB",
        len(paths),
        len(class_names),
        class_names,
        peak_rss_mib(),
    )

    key = run_key(args, cfg, predictor)
    rank, world = comm.get_rank(), comm.get_world_size()
    ids = image_ids(paths)
    conflicts = finished_elsewhere(paths, ids, args, cfg, key) if not args.overwrite else []
    if conflicts:
        for conflict in conflicts:
            logger.error("%s", conflict)
        logger.error(
            "--output %s holds finished results that this run would replace; nothing was written. "
            "Choose another --output, or give --overwrite to replace them",
            args.output,
        )
        return 2
    items = list(enumerate(zip(paths, ids)))
    if args.shard == "scenes" and world > 1:
        items = items[rank::world]  # each rank writes the outputs of its own scenes
    done, failed = [], []  # (input index, COCO image entry, detections file); paths
    for index, (path, image_id) in tqdm(items, desc="images", unit="image", disable=rank != 0):
        try:
            reader = open_scene(path, args)
        except (OSError, ValueError) as error:
            logger.error("%s", error)
            failed.append(path)
            continue
        if isinstance(reader, GeoTiffReader) and not reader.has_data:
            logger.warning(
                "%s: skipped, no valid pixel in bands %s (all nodata, masked or NaN)",
                path,
                list(reader.bands),
            )
            reader.close()
            continue
        stem = output_stem(image_id)
        new = not os.path.isdir(scene_folder(args.output, stem))
        try:
            engine = process_image(predictor, reader, path, image_id, args, cfg, key)
        except (OSError, ValueError) as error:  # a damaged block of a large raster, a foreign partial output
            logger.error("%s" if path in str(error) else f"{path}: %s", error)
            failed.append(path)
            if new and rank == 0:
                discard_unstarted(args.output, stem)
            continue
        finally:
            if isinstance(reader, GeoTiffReader):
                reader.close()
        if engine is not None:
            image = {"id": image_id, "file_name": path, "height": reader.height, "width": reader.width}
            done.append((index, image, engine.sink.paths["detections"]))
    if world > 1:  # rank 0 joins the parts of all ranks, in input order
        gathered = comm.all_gather((done, failed))
        done = sorted(entry for part, _ in gathered for entry in part)
        failed = [path for _, part in gathered for path in part]
    if rank == 0:
        categories = [
            {
                "id": i + 1,
                "name": first_synonym(n),
                "synonyms": [s.strip() for s in n.split(",") if s.strip()],
            }
            for i, n in enumerate(class_names)
        ]
        results_path = os.path.join(args.output, "predictions.json")
        scenes = [(image, name) for _, image, name in done]
        scenes += earlier_scenes(args, key, {image["id"] for image, _ in scenes})
        count = write_coco_results(
            results_path, [image for image, _ in scenes], categories, [name for _, name in scenes]
        )
        logger.info(
            "Wrote %d detections on %d images to %s; peak resident memory %.0f MiB",
            count,
            len(done),
            results_path,
            peak_rss_mib(),
        )
    comm.synchronize()
    if failed:
        logger.error("%d image(s) could not be processed: %s", len(failed), failed)
        return 1
    return 0


def init_distributed(args: argparse.Namespace, num_inputs: int) -> None:
    """Join the process group of a ``torchrun`` launch (WORLD_SIZE > 1) and choose the sharding."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.shard == "auto":
        args.shard = "scenes" if num_inputs >= world else "rows"
    if world == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # A rank waits at the end of each row-sharded scene and of the run for the slowest one: a long timeout.
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=12))
    logger.info("Rank %d of %d; sharding the %s", dist.get_rank(), world, args.shard)


if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun; other ranks log warnings and errors only
    setup_logger(name="detectron2", abbrev_name="d2", distributed_rank=rank)
    setup_logger(name="score", distributed_rank=rank)
    sys.exit(main())
