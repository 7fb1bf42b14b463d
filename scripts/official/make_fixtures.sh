#!/usr/bin/env bash
# Regenerate tests/fixtures/official/ with the official gliclass package, in its own virtual environment.
#
#   bash scripts/official/make_fixtures.sh                      # all fixtures + tests/fixtures/official/index.json
#   bash scripts/official/make_fixtures.sh --only NAME...       # a few configs (index.json left alone)
#   bash scripts/official/make_fixtures.sh --roundtrip DIR... [--out roundtrip.json]
#                                                               # load OUR checkpoints with the official package
#
# OFFICIAL_VENV (default: .venv-official in the repository root) is created when missing: torch==2.13.0 first (the
# CPU wheel; an unpinned torch would pull a CUDA build), then gliclass==0.1.21 and accelerate. Both packages import
# as `gliclass`, which is why the official one lives in its own venv; the python script never imports ours.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OFFICIAL_VENV="${OFFICIAL_VENV:-$REPO_ROOT/.venv-official}"
PYTHON="${PYTHON:-python3}"
GLICLASS_VERSION="0.1.21"
TORCH_VERSION="2.13.0"

installed_version() {  # prints the version of $1 in the official venv, or nothing
    "$OFFICIAL_VENV/bin/python" -s -E -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1" 2>/dev/null || true
}

if [ ! -x "$OFFICIAL_VENV/bin/python" ]; then
    echo "[make_fixtures] creating $OFFICIAL_VENV"
    "$PYTHON" -m venv "$OFFICIAL_VENV"
fi
if [ "$(installed_version torch)" != "$TORCH_VERSION" ] && [ "$(installed_version torch)" != "$TORCH_VERSION+cpu" ]; then
    "$OFFICIAL_VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
fi
if [ "$(installed_version gliclass)" != "$GLICLASS_VERSION" ] || [ -z "$(installed_version accelerate)" ]; then
    "$OFFICIAL_VENV/bin/python" -m pip install --quiet "gliclass==$GLICLASS_VERSION" accelerate
fi

# Relative paths in the arguments (--roundtrip DIR, --out) are taken from the caller's directory.
# -s -E: no user site-packages and no PYTHONPATH, so this repository's own `gliclass` can never shadow the official one.
exec env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    "$OFFICIAL_VENV/bin/python" -s -E "$REPO_ROOT/scripts/official/make_fixtures.py" "$@"
