#!/usr/bin/env bash
# Refresh requirements.lock on purpose (`make lock`): resolve pyproject.toml's ranges afresh in a throw-away venv,
# then pin every direct and transitive package at the versions pip chose. Review the diff, run `make test`, commit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install --quiet --upgrade pip
# torch first, pinned to the CPU wheel on local disk (an unpinned torch pulls a multi-GB CUDA build)
"$TMP/venv/bin/python" -m pip install --quiet torch==2.13.0
"$TMP/venv/bin/python" -m pip install --quiet -e ".[dev]"
{
  echo "# Every direct and transitive dependency of \`pip install -e .[dev]\`, pinned: \`make setup\` installs with"
  echo "# \`-c requirements.lock\`. Refresh on purpose with \`make lock\` (scripts/lock.sh), never by hand;"
  echo "# tests/test_lock.py fails when a pin leaves the ranges of pyproject.toml or the venv drifts from it."
  echo "# Resolved $(date -u +%Y-%m-%d) with $("$TMP/venv/bin/python" --version)."
  # the local build tag (+cpu) is dropped, so a CUDA build of the same release satisfies the pin on GPU machines
  "$TMP/venv/bin/python" -m pip freeze --all --exclude-editable | grep -vE "^(-e |pip==)" | grep -v '^#' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) pins)"
