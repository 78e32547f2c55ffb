#!/usr/bin/env bash
# Evaluate a SCORE run trained on LandDiscover50K (semantic segmentation) on its four
# targets (paper appendix A.2, Table A; DATASETS.md "Semantic segmentation benchmark").
#
#   bash eval_landdiscover.sh <run_dir> [KEY VALUE ...]
#
# One `train_net.py --eval-only` per target (flair fast potsdam floodnet), with the weights
# <run_dir>/model_final.pth, OUTPUT_DIR <run_dir>/eval_final/<target> and the ensemble
# exponents of that target's metadata; extra KEY VALUE pairs are appended to every command;
# then the Table A row (mIoU per target, average, seen / unseen mIoU) is printed and written
# to <run_dir>/eval_final/results.{md,csv}. Environment: CONFIG (default
# configs/score_landdiscover_semantic.yaml), TARGETS, NUM_GPUS (default 1), PYTHON.
# The body is shared with the instance scripts: scripts/eval_targets.sh.
KIND=sem_seg exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/eval_targets.sh" landdiscover50k \
    configs/score_landdiscover_semantic.yaml "flair fast potsdam floodnet" "$@"
