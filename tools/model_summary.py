#!/usr/bin/env python
"""Build SCORE from a config and print its parameter counts per branch.

    python tools/model_summary.py --config-file configs/score_isaid_instance.yaml --random-init

``--random-init`` builds the CLIP towers with random weights (no download);
without it the configured weights are loaded. Extra ``KEY VALUE`` pairs
override the config. The authors' counts (SCORE.md section 12) are printed
beside ours for the recipe's architecture.
"""

import argparse
import logging
from typing import Dict, List, Tuple

import score  # noqa: F401  (detectron2 compatibility shims first, then every registration)

# isort: split
from detectron2.modeling import build_model
from tabulate import tabulate
from torch import nn

from score.config import get_score_cfg

# Parameter counts of the authors' model built with the recipe (SCORE.md section 12).
AUTHORS_COUNTS = {
    "backbone.clip_model": 351_772_609,
    "context_encoder.clip_model": 427_616_513,
    "sem_seg_head.pixel_decoder": 5_790_144,
    "sem_seg_head.predictor": 42_526_216,
    "gca": 2_362_368,
    "void_embedding": 768,
    "total": 830_068_618,
}

BRANCHES: List[Tuple[str, str]] = [
    ("backbone.clip_model", "instance + semantic: ConvNeXt CLIP (image + text)"),
    ("context_encoder.clip_model", "context: remote-sensing CLIP (image + text)"),
    ("sem_seg_head.pixel_decoder", "pixel decoder"),
    ("sem_seg_head.predictor", "transformer decoder (with RAI)"),
    ("sem_seg_head.predictor.rai", "  of which RAI"),
    ("gca", "GCA"),
    ("void_embedding", "void embedding"),
]


def count(module: nn.Module) -> Tuple[int, int]:
    """(all, trainable) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def summarise(model: nn.Module) -> List[Dict[str, object]]:
    modules = dict(model.named_modules())
    rows = []
    for name, label in BRANCHES + [("", "total")]:
        module = modules.get(name)
        if module is None:
            rows.append({"part": label, "module": name, "total": "absent"})
            continue
        total, trainable = count(module)
        key = name or "total"
        rows.append(
            {
                "part": label,
                "module": key,
                "total": f"{total:,}",
                "trainable": f"{trainable:,}",
                "frozen": f"{total - trainable:,}",
                "authors'": f"{AUTHORS_COUNTS[key]:,}" if key in AUTHORS_COUNTS else "",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--random-init", action="store_true", help="random CLIP weights (no download)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = get_score_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    if args.random_init:
        cfg.MODEL.SCORE.RANDOM_INIT_CLIP = True
    cfg.freeze()
    model = build_model(cfg)
    print(f"{args.config_file}: {cfg.MODEL.META_ARCHITECTURE}")
    print(tabulate(summarise(model), headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
