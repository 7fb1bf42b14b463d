#!/usr/bin/env bash
# The device side of scripts/gpu/cv_batch.py: unpack what cv_batch_prep.sh carried, run the plan within its deadline,
# and bring every run's logs, result.json and TensorBoard events back as $OUT/runs.tar.gz (no checkpoints or exports).
#   run(command="bash scripts/gpu/cv_batch.sh experiments/plans/gpu_2026-12-04.yaml", carry=[".gpucarry"], timeout_s=560)
# Back here: tar -C logs/train/multiruns -xzf <files_at>/runs.tar.gz, then the summaries (docs/recipe_cv.md).
set -uo pipefail
export PYTHONPATH="$PWD/.gpucarry/site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PROJECT_ROOT="$PWD"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export GLICLASS_SOURCE_COMMIT="$(cat .gpucarry/SOURCE)" GT_MINILM_PATH=/tmp/minilm
python3 -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
python3 - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(".gpucarry/minilm"), Path("/tmp/minilm")
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.is_file() and f.name != "model.safetensors":
        shutil.copy(f, dst / f.name)
save_file({k: v.float() for k, v in load_file(src / "model.safetensors").items()}, dst / "model.safetensors")
PY
mkdir -p /tmp/gdata && tar -C /tmp/gdata -xJf .gpucarry/data.tar.xz && export GLICLASS_DATA_DIR="/tmp/gdata/$(ls /tmp/gdata)"
# the gated segment attention hooks transformers' attention modules: check it under the image's transformers too
(timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/test_gated_uni.py > "$OUT/gated_tests.log" 2>&1 &)
RUNS=/tmp/runs/$(basename "${1%.yaml}")
python3 scripts/gpu/cv_batch.py "$@" --root "$RUNS"
rc=$?
tar -C /tmp/runs --exclude='*.ckpt' --exclude='*.safetensors' -czf "$OUT/runs.tar.gz" "$(basename "$RUNS")"
ls -la "$OUT"
exit $rc
