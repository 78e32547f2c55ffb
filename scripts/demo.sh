#!/usr/bin/env bash
# The built-in demo (make demo), on the CPU in minutes:
#   1. synthetic versions of all seven splits (tools/make_synthetic_datasets.py);
#   2. the tiny SCORE (random CLIP towers, configs/tiny/score_tiny_isaid.yaml)
#      trained on the synthetic iSAID split;
#   3. the authors' evaluation script over the synthetic targets
#      (NWPU, SOTA, FAST, SIOR), which prints the cross-dataset table.
#
#   bash scripts/demo.sh [OUTPUT_ROOT] [KEY VALUE ...]   (default output/demo)
# Extra KEY VALUE pairs override the training config (e.g. SOLVER.MAX_ITER 50).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${1:-output/demo}
shift || true
PYTHON=${PYTHON:-.venv/bin/python}
CONFIG=configs/tiny/score_tiny_isaid.yaml
RUN=$ROOT/tiny_isaid
export DETECTRON2_DATASETS=$ROOT/datasets

echo "== 1/3 synthetic datasets -> $DETECTRON2_DATASETS"
"$PYTHON" tools/make_synthetic_datasets.py --root "$DETECTRON2_DATASETS"

echo "== 2/3 training the tiny SCORE on synthetic iSAID -> $RUN"
"$PYTHON" train_net.py --config-file "$CONFIG" --num-gpus 1 OUTPUT_DIR "$RUN" "$@"

echo "== 3/3 cross-dataset evaluation (eval_isaid.sh)"
CONFIG=$CONFIG PYTHON=$PYTHON bash eval_isaid.sh "$RUN"
