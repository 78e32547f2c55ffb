"""Peak memory of semantic inference on a 4000 x 3000 image (FloodNet's size) with a tiny model.

    python tools/bench/semantic_memory.py [--config configs/tiny/score_tiny_landdiscover_semantic.yaml]
        [--height 3000] [--width 4000] [KEY VALUE ...]

Builds the model (random weights), reads the resident memory, resets the peak
(Linux ``/proc/self/clear_refs``), then runs the test mapper and one semantic
inference of a generated JPEG of the given size (the first: the peak includes
reading the image and building the text classifier of the vocabulary). Prints the peak resident
memory of the inference above the loaded model next to the size of the
(K, H, W) float32 class map it must return; the bound semantic inference is
written for is class map + 500 MB (the Q masks are never held at full size).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from PIL import Image

import score  # noqa: F401  (registrations)

# isort: split
from detectron2.modeling import build_model

from score.config import get_score_cfg
from score.data.mappers import build_test_mapper

MB = 1 << 20


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/tiny/score_tiny_landdiscover_semantic.yaml")
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    cfg = get_score_cfg()
    cfg.merge_from_file(args.config)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    mapper = build_test_mapper(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scene.jpg")
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (args.height // 100, args.width // 100, 3), dtype=np.uint8)
        Image.fromarray(small).resize((args.width, args.height), Image.BILINEAR).save(path, quality=90)
        record = {"file_name": path, "height": args.height, "width": args.width}
        # No warm-up: memory freed by an earlier inference would stay in the process and hide the peak.
        loaded_kb = _status_kb("VmRSS")
        _reset_peak()
        with torch.no_grad():
            sem_seg = model([mapper(record)])[0]["sem_seg"]
        peak_kb = _status_kb("VmHWM")
    class_map_mb = sem_seg.numel() * sem_seg.element_size() / MB
    above_mb = (peak_kb - loaded_kb) / 1024
    result = {
        "loaded_model_MB": loaded_kb / 1024,
        "peak_MB": peak_kb / 1024,
        "peak_above_model_MB": above_mb,
        "class_map_MB": class_map_mb,
        "peak_above_model_and_class_map_MB": above_mb - class_map_mb,
    }
    print(
        f"image {args.width} x {args.height}, class map {tuple(sem_seg.shape)} float32: {class_map_mb:.0f} MB"
    )
    print(f"resident after loading the model: {loaded_kb / 1024:.0f} MB")
    print(f"peak resident during inference: {peak_kb / 1024:.0f} MB")
    print(f"peak above the loaded model: {above_mb:.0f} MB = class map + {above_mb - class_map_mb:.0f} MB")
    return result


if __name__ == "__main__":
    main()
