#!/usr/bin/env bash
# The device check of issue 25: experiment=paper_edge's three stages for a few hundred steps each on a random backbone
# of ettin-encoder-32m's shape, offline; steps/s, peak GPU memory and bf16-vs-fp32 agreement land in
# $OUT/paper_edge_smoke.json (scripts/gpu/paper_edge_smoke.py says what each number is). Arguments go to the script:
#   bash scripts/gpu/paper_edge_smoke.sh                      # 300 steps a stage (a few minutes on an H200)
#   bash scripts/gpu/paper_edge_smoke.sh --steps 100 model.compile=true
# The device image has torch, transformers, lightning, peft and torchmetrics; hydra-core, omegaconf and
# antlr4-python3-runtime travel as .gpucarry/site (as for scripts/gpu/check.sh), e.g. prepared here with
#   python3 -m pip install --target .gpucarry/site --no-deps hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
# and the run carries it:  run(command="bash scripts/gpu/paper_edge_smoke.sh", carry=[".gpucarry"], timeout_s=540)
set -uo pipefail
export PYTHONPATH="$PWD/.gpucarry/site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
timeout 500 python3 scripts/gpu/paper_edge_smoke.py --out "$OUT" "$@" 2>&1 | tee "$OUT/paper_edge_smoke.log" | grep -v "Warning\|warn(" | tail -40
