#!/usr/bin/env bash
# One short GPU session (device tool): parity on CUDA, every architecture forward/backward on CUDA, a Hydra training
# run on the GPU trainer, and the paper's speed protocol for ours vs the official pipeline on one checkpoint.
# Expects .gpucarry/site (hydra, omegaconf, antlr4, MiniLM tokenizer files) and .whl/gliclass-0.1.21 (official).
set -uo pipefail
export PYTHONPATH="$PWD/.gpucarry/site:$PWD" HF_HUB_OFFLINE=1 GLICLASS_TEST_DEVICE=cuda PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
echo "== parity on cuda"; python3 -m pytest tests/test_parity.py -q -p no:cacheprovider 2>&1 | tail -3
echo "== modeling on cuda"; python3 - <<'PY'
import sys, torch
sys.path.insert(0, "tests")
from conftest import tiny_model
for arch in ["uni-encoder", "bi-encoder", "bi-encoder-fused", "encoder-decoder"]:
    for backbone in (["bert", "deberta", "modernbert"] if arch == "uni-encoder" else ["bert"]):
        model, proc = tiny_model(backbone, architecture_type=arch, squeeze_layers=arch == "uni-encoder")
        batch = proc(["the movie was great", "bad food"], [["positive", "negative"], ["food", "price", "service"]])
        cpu = model(**batch).logits
        model = model.cuda().train()
        out = model(**{k: v.cuda() for k, v in batch.items()})
        out.logits[batch["labels_mask"].cuda()].sum().backward()
        model.eval()
        gpu = model(**{k: v.cuda() for k, v in batch.items()}).logits.cpu()
        diff = (gpu - cpu)[batch["labels_mask"]].abs().max().item()
        print(f"{arch:18s} {backbone:10s} cuda-vs-cpu max|diff|={diff:.2e} grad ok={all(p.grad is not None for p in model.parameters() if p.requires_grad and p.grad is not None)}")
PY
echo "== training on gpu (hydra)"; GLICLASS_DATA_DIR=$PWD/.gpucarry/data timeout 240 python3 run.py backbone=tiny_deberta trainer=gpu debug=fdr hydra.run.dir=/tmp/run_gpu 2>&1 | tail -15
echo "== speed (paper protocol, batch 1)"
python3 scripts/gpu/speed.py make /tmp/ckpt 2>&1 | tail -2
python3 scripts/gpu/speed.py ours /tmp/ckpt "$OUT/speed_ours.json" 2>&1 | grep -v Warn | tail -25
python3 -m pip install -q --no-index --no-deps --target /tmp/official .whl/gliclass-0.1.21-py3-none-any.whl
PYTHONPATH=/tmp/official python3 scripts/gpu/speed.py official /tmp/ckpt "$OUT/speed_official.json" 2>&1 | grep -v Warn | tail -25
