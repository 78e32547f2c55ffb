#!/usr/bin/env python
"""Memory and resume check of tools/predict.py on one large scene (the figures of docs/PREDICT.md).

Runs the tool as a child process and samples, every ``--every`` seconds, its
resident memory (VmRSS of /proc) against the tiles done and the instances
written so far (lines of the streamed files). With ``--kill-at F`` it kills
the child (SIGKILL) once a fraction F of the tiles is done, checks that the
streamed GeoJSON on disk is valid, runs the tool again (it resumes), and, with
``--reference DIR`` (an uninterrupted run's output), compares the results.

    python tools/benchmark_large_scene.py --output /tmp/run --kill-at 0.5 --reference /tmp/whole -- \\
        --config-file configs/tiny/score_tiny_isaid.yaml --input /tmp/scene_3000.tif \\
        --vocab "building,storage tank,ship" --confidence-threshold 0 --opts MODEL.WEIGHTS /tmp/tiny.pth

Everything after ``--`` goes to tools/predict.py (without --output).
"""

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

TOOL = Path(__file__).resolve().parent / "predict.py"


def count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(output: Path, tool_args, every: float, kill_at: float = None) -> dict:
    """One run of the tool; the samples (seconds, tiles done, instances written, RSS) and whether killed."""
    scene = next(output.glob("scenes/*"), None) if output.exists() else None
    child = subprocess.Popen([sys.executable, str(TOOL), "--output", str(output), *tool_args])
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
        samples.append((round(time.time() - start), done, written, round(rss_mib(child.pid))))
        seconds, done, written, rss = samples[-1]
        print(f"t={seconds:5d} s  tiles {done:5d}  written {written:7d}  RSS {rss:6d} MiB", flush=True)
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
    parser.add_argument("tool_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    tool_args = args.tool_args[1:] if args.tool_args[:1] == ["--"] else args.tool_args
    first = run(args.output, tool_args, args.every, args.kill_at)
    report = {"first": first}
    if first["killed"]:
        for path in args.output.glob("geojson/*.geojsonl"):
            lines = path.read_text().splitlines()
            valid = sum(1 for line in lines if json.loads(line)["type"] == "Feature") if lines else 0
            print(f"killed: {path} holds {valid} valid Features", flush=True)
        report["resumed"] = run(args.output, tool_args, args.every)
    if args.reference is not None:
        names = [
            "predictions.json",
            *(str(p.relative_to(args.reference)) for p in args.reference.glob("geojson/*")),
        ]
        names += [str(p.relative_to(args.reference)) for p in args.reference.glob("visualizations/*")]
        same = {
            name: (args.output / name).read_bytes() == (args.reference / name).read_bytes() for name in names
        }
        print("same as the reference:", same, flush=True)
        report["same_as_reference"] = same
    (args.output / "benchmark.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
