#!/usr/bin/env bash
# One-command installer: a virtual environment in .venv with torch, torchvision,
# detectron2 and SCORE (editable) plus its dependencies.
#
# detectron2 has no release on PyPI. Route 1 installs it from its GitHub
# repository (with its C++/CUDA extension). Where GitHub cannot be reached the
# installer falls back, automatically, to route 2: detectron2 v0.6 built from
# the PyPI source package pb1-detectron2==0.6, whose C++ sources are missing,
# so its extension build is switched off; score/compat.py covers what v0.6
# then lacks. The route taken is printed.
#
# Environment: PYTHON (interpreter for the venv, default python3),
#              VENV (default .venv), D2_ROUTE (auto | github | pypi).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
D2_ROUTE=${D2_ROUTE:-auto}
D2_GIT=https://github.com/facebookresearch/detectron2.git

say() { printf '[install] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q -c constraints.txt --upgrade pip setuptools wheel

say "installing torch and torchvision (constraints.txt)"
"${PIP[@]}" install -q -c constraints.txt torch torchvision

install_d2_github() {
    say "detectron2 route: GitHub ($D2_GIT)"
    "${PIP[@]}" install -q -c constraints.txt --no-build-isolation "git+$D2_GIT"
}

install_d2_pypi() {
    say "detectron2 route: PyPI source package pb1-detectron2==0.6, C++ extension build switched off"
    local tmp
    tmp=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps --no-build-isolation -d "$tmp" pb1-detectron2==0.6
    tar -xzf "$tmp"/pb1-detectron2-0.6.tar.gz -C "$tmp"
    # The package ships no detectron2/layers/csrc: build no extension at all.
    sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$tmp/pb1-detectron2-0.6/setup.py"
    grep -q 'ext_modules=\[\],' "$tmp/pb1-detectron2-0.6/setup.py" \
        || { say "could not switch off the extension build in pb1-detectron2's setup.py"; exit 1; }
    "${PIP[@]}" install -q -c constraints.txt --no-build-isolation "$tmp/pb1-detectron2-0.6"
    rm -rf "$tmp"
}

if "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
    say "detectron2 $("$VENV/bin/python" -c 'import detectron2; print(detectron2.__version__)') already installed; keeping it"
else
    case "$D2_ROUTE" in
        github) install_d2_github ;;
        pypi) install_d2_pypi ;;
        auto)
            if timeout 20 git ls-remote --heads "$D2_GIT" >/dev/null 2>&1; then
                install_d2_github || { say "GitHub install failed; falling back"; install_d2_pypi; }
            else
                say "GitHub is not reachable"
                install_d2_pypi
            fi ;;
        *) say "D2_ROUTE must be auto, github or pypi, not '$D2_ROUTE'"; exit 2 ;;
    esac
fi

say "installing SCORE (editable) and its dependencies"
"${PIP[@]}" install -q -c constraints.txt -r requirements.txt
"${PIP[@]}" install -q -c constraints.txt --no-build-isolation -e ".[dev]"

"$VENV/bin/python" - <<'PY'
import detectron2, torch, open_clip
import score
from score.compat import HAS_D2_C
print(f"[install] ok: torch {torch.__version__}, detectron2 {detectron2.__version__} "
      f"(C++ extension: {'yes' if HAS_D2_C else 'no, pure-PyTorch paths'}), open_clip {open_clip.__version__}")
PY
