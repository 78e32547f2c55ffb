#!/usr/bin/env python
"""Memory and resume check of tools/predict.py on one large scene (the figures of docs/PREDICT.md).

Runs the tool as a child process and samples, every ``--every`` seconds, its
resident memory and its peak so far (VmRSS, VmHWM of /proc) against the
tiles done and the instances written so far (lines of the streamed files).
With ``--kill-at F`` it kills the child (SIGKILL) once a fraction F of the
tiles is done, checks that the streamed GeoJSON on disk is valid, runs the
tool again (it resumes), and, with ``--reference DIR`` (an uninterrupted
run's output), compares the results.

    python tools/bench/benchmark_large_scene.py --output /tmp/run --kill-at 0.5 --reference /tmp/whole -- \\
        --config-file configs/tiny/score_tiny_isaid.yaml --input /tmp/scene_3000.tif \\
        --vocab "building,storage tank,ship" --confidence-threshold 0 --opts MODEL.WEIGHTS /tmp/tiny.pth

Everything after ``--`` goes to tools/predict.py (without --output).

``--oracle SCENE`` runs the same streaming pipeline (GeoTiffReader, 256 px
tiles with 64 px overlap, the scene engine and instance sink with GeoJSON and a 2048 px overlay)
with, instead of the model, a predictor that returns each 4-connected disc
of a disc scene written by ``--make-disc-scene SCENE --size N`` (coloured
discs on black, one per 40000 px^2): detections that stay local, as a
trained model's do, in any number, at a fraction of the model's cost.
"""

import argparse
import filecmp
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "predict.py"


def count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def count_features(path: Path):
    """Complete lines of a .geojsonl that are GeoJSON Features (a line that is not raises), and the
    bytes after the last newline (a line cut by the kill)."""
    valid, cut = 0, 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                cut = len(line)
                break
            if json.loads(line)["type"] != "Feature":
                raise ValueError(f"{path}: a line that is not a Feature")
            valid += 1
    return valid, cut


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process now (VmRSS) or its peak so far (VmHWM), MiB; 0 once it has ended."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def make_disc_scene(path: str, size: int, seed: int = 0) -> None:
    """A size x size GeoTIFF of red and green discs (radius 4..40 px) on black, written strip by strip."""
    import cv2
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    count = size * size // 40_000
    centres, radii = rng.integers(0, size, (count, 2)), rng.integers(4, 41, count)
    colours = np.where(rng.random(count)[:, None] < 0.5, [255, 0, 0], [0, 255, 0])
    strip = 512
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", tiled=True)
    profile.update(crs="EPSG:32633", transform=from_origin(500000, 5000000, 0.5, 0.5), compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, size, strip):
            rows = min(strip, size - y0)
            block = np.zeros((rows, size, 3), dtype=np.uint8)
            near = np.abs(centres[:, 1] - (y0 + rows / 2)) <= rows / 2 + radii
            for (x, y), r, c in zip(centres[near], radii[near], colours[near]):
                cv2.circle(block, (int(x), int(y - y0)), int(r), tuple(int(v) for v in c), -1)
            dst.write(block.transpose(2, 0, 1), window=rasterio.windows.Window(0, y0, size, rows))


def oracle_child(output: str, scene: str, overlay: bool = True) -> None:
    """The streaming pipeline of tools/predict.py on a disc scene, with the discs as the detections."""
    import score  # noqa: F401, I001  (first: its shims let detectron2 import)
    import cv2
    import numpy as np
    import torch
    from detectron2.structures import Instances

    from score.predict.geojson import FeatureMaker
    from score.predict.geotiff import GeoTiffReader
    from score.predict.instances import InstanceSink
    from score.predict.scene import SceneEngine, predict_tiles
    from score.predict.windows import tile_windows

    def discs(tile):
        masks, classes = [], []
        for category in (0, 1):
            count, labels = cv2.connectedComponents(
                (tile[:, :, category] > 0).astype(np.uint8), connectivity=4
            )
            masks += [labels == label for label in range(1, count)]
            classes += [category] * (count - 1)
        result = Instances(tile.shape[:2])
        result.pred_masks = torch.as_tensor(np.array(masks, dtype=bool).reshape(-1, *tile.shape[:2]))
        result.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
        result.scores = torch.full((len(classes),), 0.9)
        return result

    names = ["red disc", "green disc"]
    with GeoTiffReader(scene) as reader:
        scene_id = dict(image_id=Path(scene).name, height=reader.height, width=reader.width)
        sink = InstanceSink(
            output,
            Path(scene).stem,
            **scene_id,
            class_names=names,
            features=FeatureMaker(names, transform=reader.transform, crs=reader.crs),
            canvas=(lambda: reader.read_preview(2048)) if overlay else None,
        )
        engine = SceneEngine(
            output,
            Path(scene).stem,
            sink=sink,
            **scene_id,
            windows=tile_windows(reader.height, reader.width, 256, 64),
            key={"scene": scene, "oracle": "discs"},
        )
        predict_tiles(discs, reader, engine, progress=False)


def run(output: Path, tool_args, every: float, kill_at: float = None, oracle: str = None) -> dict:
    """One run of the tool; the samples (seconds, tiles done, instances written, RSS) and whether killed."""
    scene = next(output.glob("scenes/*"), None) if output.exists() else None
    if oracle is not None:
        command = [sys.executable, __file__, "--output", str(output), "--oracle-child", oracle, *tool_args]
    else:
        command = [sys.executable, str(TOOL), "--output", str(output), *tool_args]
    child = subprocess.Popen(command)
    start, samples, killed, tiles = time.time(), [], False, None
    while child.poll() is None:
        time.sleep(every)
        scene = scene or next(output.glob("scenes/*"), None)
        if scene is None:
            continue
        manifest = scene / "manifest.json"
        if tiles is None and manifest.is_file():
            tiles = json.loads(manifest.read_text())["tiles"]
        done = count_lines(scene / "progress.jsonl")
        written = count_lines(scene / "detections.jsonl")
        rss, peak = round(rss_mib(child.pid)), round(rss_mib(child.pid, "VmHWM"))
        samples.append((round(time.time() - start), done, written, rss, peak))
        line = f"t={samples[-1][0]:5d} s  tiles {done:5d}  written {written:7d}  RSS {rss:6d} MiB"
        print(f"{line}  peak {peak:6d} MiB", flush=True)
        if kill_at is not None and tiles and done >= kill_at * tiles:
            child.send_signal(signal.SIGKILL)
            child.wait()
            killed = True
    return {
        "samples": samples,
        "killed": killed,
        "returncode": child.returncode,
        "seconds": time.time() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--kill-at", type=float, help="kill at this fraction of the tiles, then resume")
    parser.add_argument("--reference", type=Path, help="an uninterrupted run's output to compare with")
    parser.add_argument("--oracle", metavar="SCENE", help="a disc scene, predicted by the disc oracle")
    parser.add_argument("--oracle-child", metavar="SCENE", help=argparse.SUPPRESS)
    parser.add_argument("--no-vis", action="store_true", help="oracle: draw no overlay")
    parser.add_argument("--make-disc-scene", metavar="PATH", help="write a disc scene and stop")
    parser.add_argument("--size", type=int, default=12000, help="side of the disc scene (px)")
    parser.add_argument("tool_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.make_disc_scene:
        make_disc_scene(args.make_disc_scene, args.size)
        return 0
    if args.oracle_child:
        oracle_child(str(args.output), args.oracle_child, overlay=not args.no_vis)
        return 0
    tool_args = args.tool_args[1:] if args.tool_args[:1] == ["--"] else args.tool_args
    first = run(args.output, tool_args, args.every, args.kill_at, args.oracle)
    report = {"first": first}
    if first["killed"]:
        for path in args.output.glob("geojson/*.geojsonl"):
            valid, cut = count_features(path)
            print(f"killed: {path} holds {valid} valid Features, then {cut} bytes of a cut line", flush=True)
        report["resumed"] = run(args.output, tool_args, args.every, oracle=args.oracle)
    if args.reference is not None:
        names = [str(p.relative_to(args.reference)) for p in args.reference.glob("geojson/*")]
        names += [str(p.relative_to(args.reference)) for p in args.reference.glob("visualizations/*")]
        names += [
            str(p.relative_to(args.reference)) for p in args.reference.glob("scenes/*/detections.jsonl")
        ]
        names += ["predictions.json"] if (args.reference / "predictions.json").exists() else []
        # Compared block by block: a threshold-0 scene's GeoJSON runs to gigabytes.
        same = {name: filecmp.cmp(args.output / name, args.reference / name, shallow=False) for name in names}
        print("same as the reference:", same, flush=True)
        report["same_as_reference"] = same
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "benchmark.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
