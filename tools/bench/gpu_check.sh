#!/usr/bin/env bash
# The GPU check of SCORE (tools/bench/gpu_check.py): AMP training, bf16 against fp32 inference, speed of
# SCORE against FC-CLIP and peak memory, on one GPU in at most 8 minutes (or, with --cpu, the tiny
# model on the CPU). Arguments go to tools/bench/gpu_check.py (--cpu, --output PREFIX, --stages ...).
#
# For a GPU machine without network that has torch, torchvision, timm, opencv and numpy:
# run tools/bench/fetch_gpu_check_wheels.sh on a machine with PyPI first and copy gpu_check_wheels/ along.
# Where an import is missing, this script creates a virtual environment (.gpu_check_venv, with the
# system's site-packages, so torch and the rest come from the machine) and installs the missing
# packages there offline from that folder; detectron2 v0.6 is built from its source package with
# the C++ extension switched off, as scripts/install.sh does (score/compat.py covers v0.6).
#
#   bash tools/bench/gpu_check.sh --output "$OUT/gpu_check"
#   PYTHON=.venv/bin/python bash tools/bench/gpu_check.sh --cpu
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS (default gpu_check_wheels),
#              GPU_CHECK_VENV (default .gpu_check_venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-gpu_check_wheels}
VENV=${GPU_CHECK_VENV:-.gpu_check_venv}
say() { printf '[gpu_check] %s\n' "$*"; }

# import name -> distribution in $WHEELS; detectron2 is handled apart (source package).
MODULES=(open_clip:open_clip_torch ftfy:ftfy regex:regex wcwidth:wcwidth fvcore:fvcore iopath:iopath
         portalocker:portalocker yacs:yacs tabulate:tabulate termcolor:termcolor omegaconf:omegaconf
         antlr4:antlr4-python3-runtime cloudpickle:cloudpickle tqdm:tqdm pydot:pydot
         pyparsing:pyparsing pycocotools:pycocotools scipy:scipy)

missing_of() {  # distributions whose module $1 (an interpreter) cannot import
    local python=$1 entry
    for entry in "${MODULES[@]}" detectron2:detectron2; do
        "$python" -c "import ${entry%%:*}" >/dev/null 2>&1 || printf '%s\n' "${entry#*:}"
    done
}

mapfile -t MISSING < <(missing_of "$PYTHON")
RUN=$PYTHON
if [ ${#MISSING[@]} -gt 0 ]; then
    say "missing for $PYTHON: ${MISSING[*]}"
    [ -d "$WHEELS" ] || { say "no $WHEELS/: run tools/bench/fetch_gpu_check_wheels.sh where PyPI is reachable"; exit 2; }
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
    RUN=$VENV/bin/python
    mapfile -t MISSING < <(missing_of "$RUN")
    PIP=("$RUN" -m pip install -q --no-index --find-links "$WHEELS" --no-deps)
    "${PIP[@]}" "pip<25" setuptools wheel
    # detectron2 v0.6's own stack at the versions it was released with, whatever the system has
    # (an antlr4 runtime other than 4.9 breaks omegaconf, an iopath >= 0.1.10 breaks detectron2).
    WANT=(fvcore iopath omegaconf antlr4-python3-runtime yacs portalocker)
    for dist in "${MISSING[@]}"; do
        case " detectron2 ${WANT[*]} " in *" $dist "*) ;; *) WANT+=("$dist") ;; esac
    done
    # Wheel files, not names: a name that the system already has at another version would be
    # "already satisfied".
    FILES=()
    for dist in "${WANT[@]}"; do
        file=$(ls "$WHEELS/${dist//-/_}"-*.whl 2>/dev/null | head -n 1)
        [ -n "$file" ] || { say "no wheel of $dist in $WHEELS"; exit 2; }
        FILES+=("$file")
    done
    say "installing offline from $WHEELS: ${WANT[*]}"
    "${PIP[@]}" "${FILES[@]}"
    if ! "$RUN" -c "import detectron2" 2>/dev/null; then
        say "building detectron2 v0.6 from $WHEELS/pb1-detectron2-0.6.tar.gz, C++ extension off"
        tmp=$(mktemp -d)
        tar -xzf "$WHEELS/pb1-detectron2-0.6.tar.gz" -C "$tmp"
        sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$tmp/pb1-detectron2-0.6/setup.py"
        grep -q 'ext_modules=\[\],' "$tmp/pb1-detectron2-0.6/setup.py" \
            || { say "could not switch off the extension build in pb1-detectron2's setup.py"; exit 1; }
        "${PIP[@]}" --no-build-isolation "$tmp/pb1-detectron2-0.6"
        rm -rf "$tmp"
    fi
    mapfile -t STILL < <(missing_of "$RUN")
    [ ${#STILL[@]} -eq 0 ] || { say "still missing after the offline install: ${STILL[*]}"; exit 1; }
fi
say "running tools/bench/gpu_check.py with $RUN ($("$RUN" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'))"
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} exec "$RUN" -W ignore::FutureWarning tools/bench/gpu_check.py "$@"
