"""Tiled against untiled class maps of a land-cover GeoTIFF with a trained semantic model: agreement, seams.

    python tools/bench/classmap_seams.py --weights model_final.pth [--size 2000] [--config FILE]
        [--workdir DIR]

Writes a --size x --size land-cover scene with its true classes
(tools/make_geotiff_scene.py --landcover --labels), predicts its class map with
``tools/predict.py --task semantic`` tiled (--tiling always: windows at the test
size, a quarter overlap) and untiled twice (--tiling never): the whole scene
resized to the test size, and the whole scene in one pass at its own scale (the
test size set to the scene's, so that the model sees the pixels the windows
see). For each untiled map it prints the share of pixels where it agrees with
the tiled one and the disagreement within 4 px of an inner window edge against
elsewhere (a seam shows as more disagreement near the edges), and each map's
pixel accuracy against the true classes (the tiled one also near inner window
edges and elsewhere). Last, the ceiling of the untiled map: a perfect model's,
the true classes shrunk to the test size and enlarged again, against the truth.
Pixels within 40 px of the scene's border are left out of the disagreement
(the untiled map's own border effects), as in tests/inference/test_classmap_seams.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import rasterio

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "configs", "tiny_world", "score_landdiscover_semantic.yaml")
BORDER, FRAME = 4, 40

from score.predict.windows import tile_windows  # noqa: E402


def near_inner_window_edges(windows, height, width, border=BORDER):
    """(H, W) bool: within ``border`` px of a window edge that lies inside the scene."""
    near = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in windows:
        for edge in (x0, x1):
            if 0 < edge < width:
                near[y0:y1, max(0, edge - border) : edge + border] = True
        for edge in (y0, y1):
            if 0 < edge < height:
                near[max(0, edge - border) : edge + border, x0:x1] = True
    return near


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="trained semantic weights")
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--workdir", default="classmap_seams")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}
    os.makedirs(args.workdir, exist_ok=True)
    scene = os.path.join(args.workdir, f"landcover_{args.size}.tif")
    truth = os.path.join(args.workdir, f"landcover_{args.size}_labels.tif")
    if not os.path.exists(scene):
        make = [sys.executable, os.path.join(REPO, "tools", "make_geotiff_scene.py"), "--output", scene]
        make += ["--size", str(args.size), "--landcover", "--labels", truth]
        subprocess.run(make, env=env, check=True, capture_output=True)
    stem = os.path.splitext(os.path.basename(scene))[0]
    maps = {}
    scene_scale = ["INPUT.MIN_SIZE_TEST", str(args.size), "INPUT.MAX_SIZE_TEST", str(args.size)]
    runs = {
        "tiled": ("always", []),
        "untiled": ("never", []),
        "untiled at scene scale": ("never", scene_scale),
    }
    for name, (tiling, overrides) in runs.items():
        output = os.path.join(args.workdir, name.replace(" ", "_"))
        command = [sys.executable, os.path.join(REPO, "tools", "predict.py"), "--config-file", args.config]
        command += [
            "--input",
            scene,
            "--output",
            output,
            "--task",
            "semantic",
            "--tiling",
            tiling,
            "--no-vis",
        ]
        command += ["--overwrite", "--opts", "MODEL.WEIGHTS", args.weights, *overrides]
        run = subprocess.run(command, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"tools/predict.py failed:\n{(run.stdout + run.stderr)[-3000:]}")
        with rasterio.open(os.path.join(output, "classmaps", f"{stem}.tif")) as src:
            maps[name] = src.read(1)
    with rasterio.open(truth) as src:
        labels = src.read(1)
    from score.config import get_score_cfg

    cfg = get_score_cfg()
    cfg.merge_from_file(args.config)
    tile = cfg.INPUT.MIN_SIZE_TEST
    windows = tile_windows(args.size, args.size, tile, tile // 4)
    inner = (slice(FRAME, -FRAME), slice(FRAME, -FRAME))
    near = near_inner_window_edges(windows, args.size, args.size)[inner]
    tiled_right = maps["tiled"] == labels
    figures = {
        "tiled_accuracy": tiled_right.mean(),
        "tiled_accuracy_near_edges": tiled_right[inner][near].mean(),
        "tiled_accuracy_elsewhere": tiled_right[inner][~near].mean(),
    }
    print(
        f"{args.size} x {args.size} px, {len(windows)} windows of {tile} px; pixel accuracy tiled "
        f"{figures['tiled_accuracy']:.1%} ({figures['tiled_accuracy_near_edges']:.1%} within {BORDER} px "
        f"of an inner window edge, {figures['tiled_accuracy_elsewhere']:.1%} elsewhere)"
    )
    for name in ("untiled", "untiled at scene scale"):
        differ = (maps["tiled"] != maps[name])[inner]
        figures[name] = {
            "agreement": 1 - differ.mean(),
            "near_edges": differ[near].mean(),
            "elsewhere": differ[~near].mean(),
            "accuracy": (maps[name] == labels).mean(),
        }
        print(
            f"{name}: agrees with tiled on {figures[name]['agreement']:.1%} of the pixels; disagreement "
            f"within {BORDER} px of an inner window edge {figures[name]['near_edges']:.1%}, elsewhere "
            f"{figures[name]['elsewhere']:.1%}; pixel accuracy {figures[name]['accuracy']:.1%}"
        )
    figures["perfect_untiled"] = (shrunk_and_enlarged(labels, tile) == labels)[inner].mean()
    print(
        f"a perfect model untiled (the true classes shrunk to {tile} px and enlarged again) agrees with "
        f"the true classes on {figures['perfect_untiled']:.2%} of the pixels"
    )
    return figures


def shrunk_and_enlarged(labels: np.ndarray, size: int) -> np.ndarray:
    """The classes of a (H, W) label map whose one-hot scores are shrunk to ``size`` px and enlarged back."""
    import torch
    import torch.nn.functional as F

    one_hot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), int(labels.max()) + 1)
    scores = one_hot.permute(2, 0, 1)[None].float()
    small = F.interpolate(scores, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    back = F.interpolate(small, size=labels.shape, mode="bilinear", align_corners=False)
    return back.argmax(1)[0].numpy()


if __name__ == "__main__":
    main()
