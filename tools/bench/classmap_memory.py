"""Peak memory, time and resuming of a class map of a large land-cover GeoTIFF through tools/predict.py.

    python tools/bench/classmap_memory.py [--size 12000] [--config FILE] [--weights FILE]
        [--kill-at FRACTION] [--workdir DIR]

Writes a --size x --size land-cover scene (tools/make_geotiff_scene.py
--landcover), then runs ``tools/predict.py --task semantic --tiling always`` on
it in a subprocess at OMP_NUM_THREADS=1 with the config's test vocabulary and
tile size. Prints the peak resident memory above the loaded model (both from
the tool's log), the total time and the time per megapixel. With --kill-at F
it also kills a second run once a fraction F of the tiles is done
(scenes/<stem>/progress.jsonl), resumes it, and compares the class raster
(classmaps/<stem>.tif) and the PNG byte for byte with the uninterrupted run.
Without --weights the model is random (the memory and time do not depend on
the weights); --kill-at needs --weights (each run would draw other random weights).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "tiny_world", "score_landdiscover_semantic.yaml")
LOADED = re.compile(r"peak resident memory after loading the model (\d+) MiB")
PEAK = re.compile(r"class map in ([\d.]+) s \(tiled: (\d+) tiles\); peak resident memory (\d+) MiB")


def predict_command(scene: str, output: str, args) -> list:
    command = [sys.executable, os.path.join(REPO, "tools", "predict.py"), "--config-file", args.config]
    command += ["--input", scene, "--output", output, "--task", "semantic", "--tiling", "always", "--no-vis"]
    if args.weights:
        command += ["--opts", "MODEL.WEIGHTS", args.weights]
    else:
        command += ["--allow-untrained"]
    return command


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}


def run_whole(scene: str, output: str, args) -> dict:
    start = time.perf_counter()
    run = subprocess.run(
        predict_command(scene, output, args), env=environment(), capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    log = run.stdout + run.stderr
    if run.returncode != 0:
        raise RuntimeError(f"tools/predict.py failed ({run.returncode}):\n{log[-3000:]}")
    loaded, peak = LOADED.search(log), PEAK.search(log)
    if loaded is None or peak is None:
        raise RuntimeError(f"no peak memory in the tool's log:\n{log[-3000:]}")
    return {
        "loaded_mib": int(loaded.group(1)),
        "peak_mib": int(peak.group(3)),
        "tiles": int(peak.group(2)),
        "scene_s": float(peak.group(1)),
        "total_s": seconds,
    }


def run_killed(scene: str, output: str, stem: str, tiles: int, fraction: float, args) -> int:
    """Start a run, SIGKILL it once ``fraction`` of the tiles is done, resume it; the tiles done then."""
    progress = os.path.join(output, "scenes", stem, "progress.jsonl")
    process = subprocess.Popen(
        predict_command(scene, output, args),
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    done = 0
    while process.poll() is None:
        if os.path.exists(progress):
            with open(progress) as f:
                done = sum(1 for _ in f)
            if done >= fraction * tiles:
                process.send_signal(signal.SIGKILL)
                break
        time.sleep(0.2)
    process.wait()
    if process.returncode == 0:
        raise RuntimeError("the run finished before it could be killed; choose a smaller --kill-at")
    run = subprocess.run(
        predict_command(scene, output, args), env=environment(), capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(f"the resumed run failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    return done


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=12000, help="side of the square scene (px)")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--weights", help="trained weights (default: random, --allow-untrained)")
    parser.add_argument(
        "--kill-at", type=float, help="also kill a run at this fraction of the tiles and resume"
    )
    parser.add_argument("--workdir", help="folder for the scene and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.kill_at is not None and not 0 < args.kill_at < 1:
        parser.error(f"--kill-at must be between 0 and 1, got {args.kill_at}")
    if args.kill_at is not None and not args.weights:
        parser.error("--kill-at needs --weights: a random model differs from run to run")
    workdir = args.workdir or tempfile.mkdtemp(prefix="classmap_memory_")
    os.makedirs(workdir, exist_ok=True)
    scene = os.path.join(workdir, f"landcover_{args.size}.tif")
    if not os.path.exists(scene):
        subprocess.run(
            [sys.executable, os.path.join(REPO, "tools", "make_geotiff_scene.py"), "--output", scene]
            + ["--size", str(args.size), "--landcover"],
            env=environment(),
            check=True,
            capture_output=True,
        )
    stem = os.path.splitext(os.path.basename(scene))[0]
    figures = run_whole(scene, os.path.join(workdir, "whole"), args)
    megapixels = args.size * args.size / 1e6
    figures["above_model_mib"] = figures["peak_mib"] - figures["loaded_mib"]
    figures["s_per_mpx"] = figures["scene_s"] / megapixels
    print(
        f"{args.size} x {args.size} px ({figures['tiles']} tiles): peak resident memory "
        f"{figures['peak_mib']} MiB, {figures['above_model_mib']} MiB above the loaded model "
        f"({figures['loaded_mib']} MiB); scene {figures['scene_s']:.1f} s "
        f"({figures['s_per_mpx']:.2f} s/Mpx), whole command {figures['total_s']:.1f} s"
    )
    if args.kill_at is not None:
        cut = os.path.join(workdir, "killed")
        done = run_killed(scene, cut, stem, figures["tiles"], args.kill_at, args)
        same = {}
        for name in (f"classmaps/{stem}.tif", f"classmaps/{stem}.png", f"classmaps/{stem}.classes.json"):
            with (
                open(os.path.join(cut, name), "rb") as a,
                open(os.path.join(workdir, "whole", name), "rb") as b,
            ):
                same[name] = a.read() == b.read()
        figures["resumed_identical"] = all(same.values())
        print(
            f"killed after {done} of {figures['tiles']} tiles and resumed: "
            + ", ".join(f"{name} {'identical' if ok else 'DIFFERENT'}" for name, ok in same.items())
        )
    return figures


if __name__ == "__main__":
    sys.exit(0 if main().get("resumed_identical", True) else 1)
