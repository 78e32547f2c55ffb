#!/usr/bin/env bash
# The built-in semantic demo (make demo-semantic): the tiny world's land cover on the CPU,
# under 10 minutes at one thread.
#   1. synthetic versions of the semantic splits (tools/make_synthetic_datasets.py --semantic):
#      LandDiscover50K train and a held-out val part, FLAIR, FAST, Potsdam, FloodNet;
#   2. the tiny-world SCORE (frozen tiny towers pretrained on the objects and land cover of all
#      vocabularies, weights/tiny_world/; configs/tiny_world/score_landdiscover_semantic.yaml)
#      trained on synthetic LandDiscover50K, evaluated on its val part;
#   3. eval_landdiscover.sh over the four synthetic targets: the Table A row, mIoU per target,
#      average, seen and unseen mIoU;
#   4. class maps of a few images of each target beside the input and the ground truth
#      (scripts/semantic_pictures.py).
#
#   bash scripts/demo_semantic.sh [OUTPUT_ROOT] [KEY VALUE ...]   (default output/demo_semantic)
# Extra KEY VALUE pairs override the training config (e.g. SOLVER.MAX_ITER 50, or
# MODEL.SCORE.RANDOM_INIT_CLIP True for random towers). Environment: CONFIG, PYTHON.
# The console gets one line per step and the tables; the full logs go to OUTPUT_ROOT/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${1:-output/demo_semantic}
shift || true
PYTHON=${PYTHON:-.venv/bin/python}
CONFIG=${CONFIG:-configs/tiny_world/score_landdiscover_semantic.yaml}
RUN=$ROOT/tiny_world_landdiscover
LOGS=$ROOT/logs
PICTURES=$ROOT/class_maps
export DETECTRON2_DATASETS=$ROOT/datasets
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$LOGS"
START=$SECONDS

source scripts/common.sh  # logged, train_logged: a step's output to its log file

echo "== 1/4 synthetic semantic datasets -> $DETECTRON2_DATASETS"
logged "$LOGS/datasets.log" "$PYTHON" tools/make_synthetic_datasets.py --root "$DETECTRON2_DATASETS" --semantic

echo "== 2/4 training the tiny-world SCORE on synthetic LandDiscover50K ($CONFIG) -> $RUN (log: $LOGS/train.log)"
train_logged "$LOGS/train.log" "$PYTHON" train_net.py --config-file "$CONFIG" --num-gpus 1 OUTPUT_DIR "$RUN" "$@"

echo "== 3/4 cross-dataset evaluation (eval_landdiscover.sh; log: $LOGS/eval.log)"
CONFIG=$CONFIG PYTHON=$PYTHON logged "$LOGS/eval.log" bash eval_landdiscover.sh "$RUN" "$@"

echo "== 4/4 class maps of synthetic target images -> $PICTURES (log: $LOGS/pictures.log)"
for target in flair fast potsdam floodnet; do
    logged "$LOGS/pictures_$target.log" "$PYTHON" scripts/semantic_pictures.py --config-file "$CONFIG" \
        --weights "$RUN/model_final.pth" --dataset "${target}_val_sem_seg" --count 2 --output "$PICTURES" "$@"
done

echo
echo "## In-domain: synthetic LandDiscover50K val (mIoU, %; every class seen)"
"$PYTHON" - "$RUN" <<'PY'
import glob, json, sys
with open(glob.glob(f"{sys.argv[1]}/inference/landdiscover50k_val_sem_seg/results.json")[0]) as f:
    sem_seg = json.load(f)["sem_seg"]
print(f"mIoU {sem_seg['mIoU']:.2f}  fwIoU {sem_seg['fwIoU']:.2f}  pACC {sem_seg['pACC']:.2f}")
PY
echo
echo "## Cross-dataset: trained on synthetic LandDiscover50K, mIoU (%) on the synthetic targets"
cat "$RUN/eval_final/results.md"
echo
echo "Class maps: $PICTURES/   logs: $LOGS/   ($(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s)"
