#!/usr/bin/env bash
# The built-in demo (make demo): the tiny world on the CPU, about 9 minutes at one thread.
#   1. synthetic versions of all seven splits (tools/make_synthetic_datasets.py);
#   2. the tiny-world SCORE (the tiny SCORE on the frozen tiny towers pretrained on the
#      concepts of all five vocabularies, weights/tiny_world/; configs/tiny_world/score_isaid.yaml)
#      trained on the synthetic iSAID split, evaluated on its val split;
#   3. the authors' evaluation script over the synthetic targets (NWPU, SOTA, FAST, SIOR):
#      the cross-dataset table with seen and unseen AP;
#   4. prediction overlays of a few synthetic NWPU images (tools/predict.py) with NWPU's
#      vocabulary, which holds two classes iSAID never names (airplane, vehicle).
#
#   bash scripts/demo.sh [OUTPUT_ROOT] [KEY VALUE ...]   (default output/demo)
# Extra KEY VALUE pairs override the training config (e.g. SOLVER.MAX_ITER 50); the schedule
# (1500 iterations on 320 px crops of a 64-wide model with a 4-prediction decoder, a
# 50-iteration Gumbel warm-up, 384 px test size) is the tiny-world config's (docs/GETTING_STARTED.md).
# Environment: CONFIG (default configs/tiny_world/score_isaid.yaml), PYTHON.
# The console gets one line per step and the tables; the full logs go to OUTPUT_ROOT/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${1:-output/demo}
shift || true
PYTHON=${PYTHON:-.venv/bin/python}
CONFIG=${CONFIG:-configs/tiny_world/score_isaid.yaml}
RUN=$ROOT/tiny_world_isaid
LOGS=$ROOT/logs
OVERLAYS=$ROOT/predictions
export DETECTRON2_DATASETS=$ROOT/datasets
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$LOGS"
START=$SECONDS

source scripts/common.sh  # logged, train_logged: a step's output to its log file

echo "== 1/4 synthetic datasets -> $DETECTRON2_DATASETS"
logged "$LOGS/datasets.log" "$PYTHON" tools/make_synthetic_datasets.py --root "$DETECTRON2_DATASETS"

echo "== 2/4 training the tiny-world SCORE on synthetic iSAID ($CONFIG) -> $RUN (log: $LOGS/train.log)"
train_logged "$LOGS/train.log" "$PYTHON" train_net.py --config-file "$CONFIG" --num-gpus 1 OUTPUT_DIR "$RUN" "$@"

echo "== 3/4 cross-dataset evaluation (eval_isaid.sh; log: $LOGS/eval.log)"
PYTHON=$PYTHON logged "$LOGS/eval.log" bash eval_isaid.sh "$RUN" "$@"  # with the run folder's config.yaml

echo "== 4/4 prediction overlays of synthetic NWPU images -> $OVERLAYS/visualizations (log: $LOGS/predict.log)"
mapfile -t IMAGES < <(find "$DETECTRON2_DATASETS/NWPU/image_patches" -name '*.jpg' -o -name '*.png' | sort | head -n 4)
logged "$LOGS/predict.log" "$PYTHON" tools/predict.py --config-file "$CONFIG" --input "${IMAGES[@]}" \
    --output "$OVERLAYS" --confidence-threshold 0.3 \
    --opts MODEL.WEIGHTS "$RUN/model_final.pth" DATASETS.TEST "('nwpu_val_instance',)" "$@"

echo
"$PYTHON" scripts/demo_table.py "$RUN"
echo
echo "Tables: $RUN/eval_final/results.md and results.csv"
echo "Overlays: $OVERLAYS/visualizations/   logs: $LOGS/   ($(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s)"
