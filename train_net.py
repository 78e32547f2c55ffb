#!/usr/bin/env python
"""Train or evaluate SCORE with detectron2's launcher.

    python train_net.py --config-file configs/score_isaid_instance.yaml --num-gpus 1
    python train_net.py --config configs/score_isaid_instance.yaml --num-gpus 1 --dist-url auto \\
        --eval-only OUTPUT_DIR out/nwpu DATASETS.TEST "('nwpu_val_instance',)" \\
        MODEL.WEIGHTS model_final.pth \\
        MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA 0.4 MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA 0.4

The second line is the authors' evaluation command (eval_isaid.sh, eval_sior.sh):
``--config`` is accepted as an abbreviation of detectron2's ``--config-file``
(argparse prefix matching). Trailing ``KEY VALUE`` pairs override the config.

Before the model is built (docs/RELIABILITY.md): the solver values are
checked, the run takes the lock of its OUTPUT_DIR (a second run there is
refused, naming the first one's PID), and every split of DATASETS.TRAIN and
DATASETS.TEST is loaded and validated.
"""

import argparse
from typing import Any

import score  # noqa: F401  (detectron2 compatibility shims first, then every registration)

# isort: split
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from score.checkpoint import SCORECheckpointer
from score.config import get_score_cfg
from score.engine import Trainer, adapt_cfg_to_device
from score.engine.preflight import check_training_config, lock_output_dir


def setup(args: argparse.Namespace) -> CfgNode:
    """The frozen config of a run: SCORE's keys, the yaml, then the command-line overrides."""
    cfg = get_score_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg = adapt_cfg_to_device(cfg)
    cfg.freeze()
    if not args.eval_only:
        check_training_config(cfg, comm.get_world_size())
    if comm.is_main_process():
        # Before default_setup writes config.yaml there.
        lock_output_dir(cfg.OUTPUT_DIR)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="score")
    return cfg


def main(args: argparse.Namespace) -> Any:
    cfg = setup(args)
    if args.eval_only:
        Trainer.check_datasets(cfg, training=False)
        model = Trainer.build_model(cfg)
        # An unreadable or partial checkpoint raises, naming the file / the entries.
        SCORECheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, require_complete=not cfg.MODEL.ALLOW_PARTIAL_WEIGHTS
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
