#!/usr/bin/env bash
# Shared body of eval_isaid.sh, eval_sior.sh and eval_landdiscover.sh: evaluate one trained run on its targets.
#
#   bash scripts/eval_targets.sh <train family> <default config> "<default targets>" <run_dir> [KEY VALUE ...]
#
# One `train_net.py --eval-only` per target, with the weights <run_dir>/model_final.pth,
# OUTPUT_DIR <run_dir>/eval_final/<target> and the ensemble exponents the authors used for
# that target (dataset metadata, read by tools/ensemble_exponents.py). Extra KEY VALUE pairs
# are appended to every command. Then tools/collect_results.py writes the Table 1 row to
# <run_dir>/eval_final/results.{md,csv}.
# Splits are <train family>_train_<KIND> and <target>_val_<KIND>, KIND "instance" (default)
# or "sem_seg" (semantic segmentation; the row is then mIoU, paper Table A).
# The config is CONFIG when set, else <run_dir>/config.yaml (written by training), else <default config>;
# the first line printed says which.
# Environment: CONFIG, TARGETS (override the defaults), NUM_GPUS (default 1),
# PYTHON (default .venv/bin/python if present, else python), EVAL_NAME (the folder
# under <run_dir> instead of eval_final, e.g. for an ablation of the exponents).
set -euo pipefail

TRAIN=$1
DEFAULT_CONFIG=$2
DEFAULT_TARGETS=$3
shift 3
if [[ $# -lt 1 ]]; then
    echo "usage: bash eval_${TRAIN}.sh <run_dir> [KEY VALUE ...]" >&2
    exit 2
fi
RUN_DIR=${1%/}
shift

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The config the run was trained with (train_net.py writes it to OUTPUT_DIR), unless CONFIG names one.
if [[ -n "${CONFIG:-}" ]]; then
    echo "== config: $CONFIG (from CONFIG)"
elif [[ -f "$RUN_DIR/config.yaml" ]]; then
    CONFIG=$RUN_DIR/config.yaml
    echo "== config: $CONFIG (the run folder's)"
else
    CONFIG=$DEFAULT_CONFIG
    echo "== config: $CONFIG (the recipe's: $RUN_DIR has no config.yaml)"
fi
EVAL_DIR=$RUN_DIR/${EVAL_NAME:-eval_final}
TARGETS=${TARGETS:-$DEFAULT_TARGETS}
KIND=${KIND:-instance}
case $KIND in
    instance) METRICS=segm ;;
    sem_seg) METRICS=sem_seg ;;
    *) echo "KIND must be instance or sem_seg, not '$KIND'" >&2; exit 2 ;;
esac
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

for target in $TARGETS; do
    exponents=$("$PYTHON" "$REPO/tools/ensemble_exponents.py" "${TRAIN}_train_$KIND" "${target}_val_$KIND")
    read -r alpha beta <<< "$exponents"
    echo "== $TRAIN -> $target: alpha $alpha, beta $beta"
    "$PYTHON" "$REPO/train_net.py" --config "$CONFIG" --num-gpus "${NUM_GPUS:-1}" --dist-url auto --eval-only \
        OUTPUT_DIR "$EVAL_DIR/$target" \
        DATASETS.TEST "('${target}_val_$KIND',)" \
        MODEL.WEIGHTS "$RUN_DIR/model_final.pth" \
        MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA "$alpha" \
        MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA "$beta" \
        "$@"
done

# shellcheck disable=SC2086  # TARGETS is a word list
"$PYTHON" "$REPO/tools/collect_results.py" "$EVAL_DIR" --targets $TARGETS --task "$METRICS"
