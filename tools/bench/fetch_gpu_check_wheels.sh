#!/usr/bin/env bash
# Downloads, on a machine with PyPI, what tools/bench/gpu_check.sh needs on a GPU machine without network
# that has torch, torchvision, timm, opencv and numpy but not detectron2, open_clip, fvcore or
# pycocotools: wheels for CPython 3.12 on manylinux x86_64 (binary ones for that platform, pure-Python
# ones py3-none-any) and the detectron2 v0.6 source package (pb1-detectron2==0.6), into an ignored
# folder (default gpu_check_wheels/, < 64 MB). Dependencies are listed here explicitly (--no-deps)
# so that nothing the GPU machine already has (torch, numpy, ...) is downloaded again.
# fvcore and antlr4-python3-runtime are published as source only; both are pure Python and are built
# into wheels here, so that the GPU machine needs no build step for them.
#
#   bash tools/bench/fetch_gpu_check_wheels.sh [FOLDER]
# Environment: PYTHON (interpreter whose pip is used, default python3; pip < 25 for the
# pb1-detectron2 sdist, see constraints.txt), PY_VERSION (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-gpu_check_wheels}
PYTHON=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
PIP=("$PYTHON" -m pip)
say() { printf '[fetch] %s\n' "$*"; }
mkdir -p "$DEST"

# Compiled packages: CPython $PY_VERSION manylinux wheels.
BINARY=(pycocotools==2.0.11 regex scipy)
# Pure-Python wheels: open_clip and the imports of detectron2 v0.6, fvcore and iopath,
# plus setuptools and wheel to build detectron2 offline (--no-build-isolation), and pip < 25
# (pip >= 25 refuses the metadata of the pb1-detectron2 sdist, see constraints.txt).
PURE=(open_clip_torch==3.3.0 ftfy wcwidth iopath==0.1.9 portalocker yacs tabulate termcolor
      omegaconf==2.3.0 cloudpickle tqdm pydot pyparsing setuptools wheel "pip<25")
# Source-only pure-Python packages, built into py3-none-any wheels here.
SOURCE_ONLY=(fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3)

PLATFORM=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
say "compiled wheels for CPython $PY_VERSION: ${BINARY[*]}"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp "${PLATFORM[@]}" -d "$DEST" "${BINARY[@]}"
say "pure-Python wheels: ${PURE[*]}"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" "${PLATFORM[@]}" \
    -d "$DEST" "${PURE[@]}"
say "building pure-Python wheels of the source-only packages: ${SOURCE_ONLY[*]}"
"${PIP[@]}" wheel -q --no-deps -w "$DEST" "${SOURCE_ONLY[@]}"
say "detectron2 v0.6 source package (pb1-detectron2==0.6)"
"${PIP[@]}" download -q --no-deps --no-binary=:all: --no-build-isolation -d "$DEST" pb1-detectron2==0.6

# Everything the offline install will ask for must resolve from the folder alone, for $PY_VERSION.
say "checking that the wheels resolve offline for CPython $PY_VERSION"
CHECK=$(mktemp -d)
trap 'rm -rf "$CHECK"' EXIT
"${PIP[@]}" install -q --dry-run --no-index --find-links "$DEST" --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp "${PLATFORM[@]}" --target "$CHECK" \
    "${BINARY[@]}" "${PURE[@]}" "${SOURCE_ONLY[@]}"
ls "$DEST"/pb1-detectron2-0.6.tar.gz >/dev/null
say "$(du -sh "$DEST" | cut -f1) in $DEST ($(ls "$DEST" | wc -l) files)"
