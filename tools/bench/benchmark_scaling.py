#!/usr/bin/env python
"""Cost of SCORE inference as the image and the vocabulary grow (CPU), with random weights.

    python tools/bench/benchmark_scaling.py --which tiny --output tools/bench/results/scaling_tiny

* **Image size**: for each short side S (``--short-sides``, the long side
  4/3 S), one inference on the whole image (the test resize off: the model
  sees S x 4/3 S) and one tiled (``score.predict.merge.tiled_inference``, windows of
  ``--tile`` px with ``--overlap``, each window run by the model as it is);
  wall time and peak resident memory of the row (VmHWM, reset before each
  row, as tools/bench/benchmark.py).
* **Vocabulary size**: for each K (``--vocab-sizes``), the first inference
  with a new vocabulary of K names (cold: the text tower encodes its K x 18
  prompts) and the next one (cached: the classifier comes from the bank's
  memory), at 512 x 683.

The model is built once (tools/bench/benchmark.py's ``build_cfg``), the real text
tower kept for the vocabulary rows; one warm-up inference precedes the rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402  (configs, batches, peak memory)

from score.predict.merge import tiled_inference  # noqa: E402

logger = logging.getLogger("score.benchmark_scaling")


def _inputs(image: np.ndarray) -> dict:
    height, width = image.shape[:2]
    return {
        "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "height": height,
        "width": width,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--which", choices=sorted(benchmark.CONFIGS), default="tiny")
    parser.add_argument("--short-sides", nargs="+", type=int, default=[512, 1024, 2048])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--vocab-sizes", nargs="+", type=int, default=[10, 37, 100, 500])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", required=True, help="OUTPUT.json, OUTPUT.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = benchmark.build_cfg(args.which, "SCORE", "cpu")
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    if model.rai is not None:
        for _ in range(model.rai.warmup_iters):
            model.rai.step()
    rng = np.random.default_rng(0)

    def predict(image: np.ndarray):
        with torch.inference_mode():
            return model([_inputs(image)])[0]["instances"]

    predict(rng.integers(0, 256, (512, 683, 3), dtype=np.uint8))  # warm-up
    size_rows = []
    for side in args.short_sides:
        image = rng.integers(0, 256, (side, round(side * 4 / 3), 3), dtype=np.uint8)
        for mode in ("untiled", "tiled"):
            with benchmark.PeakMemory("cpu") as peak:
                tic = time.perf_counter()
                if mode == "untiled":
                    predict(image)
                    tiles = 1
                else:
                    tiles = 0

                    def counted(tile: np.ndarray):
                        nonlocal tiles
                        tiles += 1
                        return predict(tile)

                    tiled_inference(counted, image, tile_size=args.tile, overlap=args.overlap)
                seconds = time.perf_counter() - tic
            row = {
                "image (HxW)": f"{image.shape[0]}x{image.shape[1]}",
                "mode": mode if mode == "untiled" else f"tiled {args.tile}/{args.overlap}",
                "tiles": tiles,
                "seconds": round(seconds, 2),
                "peak RSS MB": round(peak.mb),
                "load1": round(os.getloadavg()[0], 1),
            }
            size_rows.append(row)
            logger.info("%s", row)

    vocab_rows = []
    image = rng.integers(0, 256, (512, 683, 3), dtype=np.uint8)
    for size in args.vocab_sizes:
        names = [f"object kind {i}" for i in range(size)]
        model.set_vocabulary(names)
        times = []
        for _ in range(2):
            tic = time.perf_counter()
            predict(image)
            times.append(time.perf_counter() - tic)
        row = {
            "classes": size,
            "cold s (text tower + inference)": round(times[0], 2),
            "cached s": round(times[1], 2),
            "load1": round(os.getloadavg()[0], 1),
        }
        vocab_rows.append(row)
        logger.info("%s", row)

    report = {"machine": benchmark.machine_info("cpu"), "command": " ".join(sys.argv), "which": args.which}
    report.update(size=size_rows, vocabulary=vocab_rows)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.output}.json").write_text(json.dumps(report, indent=1, default=str))
    text = "\n".join(
        [
            "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()),
            "",
            f"Command: `{report['command']}`; model: {args.which} (random weights)",
            "",
            tabulate(size_rows, headers="keys", tablefmt="github"),
            "",
            tabulate(vocab_rows, headers="keys", tablefmt="github"),
        ]
    )
    Path(f"{args.output}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
