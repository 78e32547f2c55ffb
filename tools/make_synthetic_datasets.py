"""Write synthetic stand-ins for the seven SCORE instance splits, or (``--semantic``) for the
semantic-segmentation splits (see datasets/README.md).

    python tools/make_synthetic_datasets.py --root datasets_synthetic
    python tools/make_synthetic_datasets.py --root datasets_synthetic --semantic
    export DETECTRON2_DATASETS=datasets_synthetic

The scenes, the concept and cover tables and the layout are described in
``synthetic_world/scenes.py``, ``synthetic_world/landcover.py`` and ``datasets/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import time

from score.data.datasets import SEM_SEG_SPLITS, SPLITS
from synthetic_world.landcover import write_semantic_datasets
from synthetic_world.scenes import write_synthetic_datasets

logger = logging.getLogger("make_synthetic_datasets")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="dataset root to write (DETECTRON2_DATASETS)")
    parser.add_argument(
        "--semantic",
        action="store_true",
        help="write the semantic splits (LandDiscover50K train and val, FLAIR, FAST, Potsdam, FloodNet)",
    )
    parser.add_argument(
        "--num-train", type=int, default=None, help="images per training split (default 48; semantic 320)"
    )
    parser.add_argument(
        "--num-val", type=int, default=None, help="images per validation split (default 16; semantic 24)"
    )
    parser.add_argument("--min-size", type=int, default=256, help="smallest image height/width, pixels")
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="largest image height/width, pixels (default 512; semantic 320)",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical output")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=None,
        choices=[s.name for s in SPLITS + SEM_SEG_SPLITS],
        help="splits to write (default: all instance splits, or all semantic ones with --semantic)",
    )
    args = parser.parse_args(argv)
    defaults = (320, 24, 320) if args.semantic else (48, 16, 512)
    for key, default in zip(("num_train", "num_val", "max_size"), defaults):
        if getattr(args, key) is None:
            setattr(args, key, default)
    family = {s.name for s in (SEM_SEG_SPLITS if args.semantic else SPLITS)}
    wrong = [n for n in args.splits or () if n not in family]
    if wrong:
        parser.error(f"--splits {wrong} are not {'semantic' if args.semantic else 'instance'} splits")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    write = write_semantic_datasets if args.semantic else write_synthetic_datasets
    names = write(
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
