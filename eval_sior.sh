#!/usr/bin/env bash
# Evaluate a SCORE run trained on SIOR on its four targets (DATASETS.md, paper Table 1).
#
#   bash eval_sior.sh <run_dir> [KEY VALUE ...]
#
# One `train_net.py --eval-only` per target (nwpu sota fast isaid), with the weights
# <run_dir>/model_final.pth, OUTPUT_DIR <run_dir>/eval_final/<target> and the ensemble
# exponents the authors used for that target (dataset metadata); extra KEY VALUE pairs
# are appended to every command; then the Table 1 row is printed and written to
# <run_dir>/eval_final/results.{md,csv}. The config is CONFIG when set, else the run's
# <run_dir>/config.yaml, else configs/score_sior_instance.yaml.
# Environment: TARGETS, NUM_GPUS (default 1), PYTHON.
# The body is shared with the other training set: scripts/eval_targets.sh.
exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/eval_targets.sh" sior configs/score_sior_instance.yaml "nwpu sota fast isaid" "$@"
