"""Write synthetic stand-ins for the seven SCORE splits (see datasets/README.md).

    python tools/make_synthetic_datasets.py --root datasets_synthetic
    export DETECTRON2_DATASETS=datasets_synthetic

The scenes, the concept table and the layout are described in
``synthetic_world/scenes.py`` and ``datasets/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import time

from score.data.datasets import SPLITS
from synthetic_world.scenes import write_synthetic_datasets

logger = logging.getLogger("make_synthetic_datasets")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="dataset root to write (DETECTRON2_DATASETS)")
    parser.add_argument("--num-train", type=int, default=48, help="images per training split")
    parser.add_argument("--num-val", type=int, default=16, help="images per validation split")
    parser.add_argument("--min-size", type=int, default=256, help="smallest image height/width, pixels")
    parser.add_argument("--max-size", type=int, default=512, help="largest image height/width, pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical output")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=None,
        choices=[s.name for s in SPLITS],
        help="splits to write (default: all)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    names = write_synthetic_datasets(
        args.root,
        num_train=args.num_train,
        num_val=args.num_val,
        min_size=args.min_size,
        max_size=args.max_size,
        seed=args.seed,
        splits=args.splits,
    )
    logger.info(
        "Wrote %d splits under %s in %.1f s; use them with DETECTRON2_DATASETS=%s",
        len(names), args.root, time.perf_counter() - start, args.root,
    )  # fmt: skip


if __name__ == "__main__":
    main()
