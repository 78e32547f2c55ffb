#!/usr/bin/env python
"""Real-data check: train the tiny SCORE on a small real COCO set and evaluate on the same images.

    python tools/bench/real_sample_check.py --images ../shared/data/nwpu_vhr10_sample/images \\
        --annotations ../shared/data/nwpu_vhr10_sample/instances.json \\
        --iters 400 --output-dir output/real_check

By default it uses the NWPU VHR-10 sample that sits beside the project
(research-use data: read in place, never copied). The set is registered
under the NWPU class list, evaluated once before training (random decoders),
trained for ``--iters`` iterations with the tiny config, and evaluated again.
It prints, and writes as markdown, the training loss at the start and the
end and the mask AP before and after. This checks that the pipeline learns on
real imagery (a training-set fit), not generalisation.
"""

import argparse
import json
import logging
import statistics
from pathlib import Path

import score  # noqa: F401  (detectron2 compatibility shims first, then every registration)

# isort: split
from detectron2.utils.logger import setup_logger

from score.config import get_score_cfg
from score.data.datasets import NWPU_CLASSES, register_instance_dataset
from score.engine import Trainer

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "data" / "nwpu_vhr10_sample"
DATASET = "real_sample_instance"


def total_losses(metrics_file: Path) -> list:
    """(iteration, total_loss) of every logged step of a detectron2 metrics.json."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return [(r["iteration"], r["total_loss"]) for r in rows if "total_loss" in r]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default=str(SAMPLE / "images"))
    parser.add_argument("--annotations", default=str(SAMPLE / "instances.json"))
    parser.add_argument("--config-file", default=str(REPO / "configs" / "tiny" / "score_tiny_isaid.yaml"))
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--output-dir", default="output/real_check")
    parser.add_argument("--report", default=None, help="write the markdown report here too")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()

    register_instance_dataset(DATASET, args.images, args.annotations, NWPU_CLASSES)
    cfg = get_score_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN",
            f"('{DATASET}',)",
            "DATASETS.TEST",
            f"('{DATASET}',)",
            "MODEL.SCORE.TRAIN_VOCABULARY",
            str(list(NWPU_CLASSES)),
            "SOLVER.MAX_ITER",
            str(args.iters),
            "SOLVER.STEPS",
            f"({int(args.iters * 0.9)}, {int(args.iters * 0.95)})",
            "SOLVER.CHECKPOINT_PERIOD",
            str(args.iters * 10),
            "OUTPUT_DIR",
            args.output_dir,
        ]  # fmt: skip
        + args.opts
    )
    cfg.freeze()
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    setup_logger(output=cfg.OUTPUT_DIR, name="score")
    setup_logger(output=cfg.OUTPUT_DIR, name="detectron2")
    logging.getLogger("score").setLevel(logging.INFO)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = Trainer.test(cfg, trainer.model)["segm"]
    trainer.train()
    after = Trainer.test(cfg, trainer.model)["segm"]

    losses = total_losses(Path(cfg.OUTPUT_DIR) / "metrics.json")
    first = statistics.mean(v for _, v in losses[:2])
    last = statistics.mean(v for _, v in losses[-2:])
    report = "\n".join(
        [
            f"Real-data check: {len(NWPU_CLASSES)} NWPU classes, images {args.images}, "
            f"{args.iters} iterations of {Path(args.config_file).name}",
            "",
            "| | before training | after training |",
            "| --- | --- | --- |",
            f"| total loss (mean of the first / last two logged steps) | {first:.2f} | {last:.2f} |",
            f"| mask AP | {before['AP']:.2f} | {after['AP']:.2f} |",
            f"| mask AP50 | {before['AP50']:.2f} | {after['AP50']:.2f} |",
        ]
    )
    print(report)
    if args.report:
        Path(args.report).write_text(report + "\n")


if __name__ == "__main__":
    main()
