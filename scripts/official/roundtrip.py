"""Round trip: checkpoints saved by OUR package must load in the official `gliclass` with the same logits.

Runs in this repository's venv: builds tiny random models for every architecture and the main options, saves each
with `save_pretrained` plus an `expected.json` (our inputs and logits, one unpadded text per case), then asks the
official package (its own venv, via make_fixtures.sh --roundtrip) to load them and compare. The report is written
to tests/fixtures/official/roundtrip.json and checked by tests/test_parity.py.

    .venv/bin/python scripts/official/roundtrip.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from conftest import tiny_model  # noqa: E402

REPORT = REPO / "tests" / "fixtures" / "official" / "roundtrip.json"
TEXTS = ["i love this movie", "the food was terrible and the service was bad"]
LABELS = [["positive", "negative", "neutral"], ["food", "service", "price", "quality"]]
CONFIGS: dict[str, dict] = {
    "uni_bert_first": {},
    "uni_bert_avg_normalize": {"pooling_strategy": "avg", "normalize_features": True},
    "uni_bert_max_mlp": {"pooling_strategy": "max", "scorer_type": "mlp"},
    "uni_bert_first_lstm_weighted_dot": {"use_lstm": True, "scorer_type": "weighted-dot"},
    "uni_bert_first_hopfield_prompt_first": {"scorer_type": "hopfield", "prompt_first": True},
    "uni_bert_pass_cross_attn": {"pooling_strategy": "pass", "scorer_type": "cross-attn", "scorer_num_heads": 4},
    # the official package knows only the official spans (our exact_feature_spans is ignored there)
    "uni_bert_class_average": {"class_token_pooling": "average", "exact_feature_spans": False},
    "uni_bert_segments": {"use_segment_embeddings": True},
    "uni_deberta_first": {"backbone": "deberta"},
    "uni_modernbert_first": {"backbone": "modernbert"},
    "bi_bert_first": {"architecture_type": "bi-encoder"},
    "bi_bert_avg": {"architecture_type": "bi-encoder", "pooling_strategy": "avg"},
    "fused_bert_first": {"architecture_type": "bi-encoder-fused"},
    "encdec_t5_first": {"architecture_type": "encoder-decoder"},
}
MODEL_INPUTS = ("input_ids", "attention_mask", "class_input_ids", "class_attention_mask", "labels_mask")


def save_case(name: str, options: dict, out: Path) -> Path:
    options = dict(options)
    model, processor = tiny_model(options.pop("backbone", "bert"), seed=len(name), **options)
    cases = []
    with torch.inference_mode():
        for i, (text, labels) in enumerate(zip(TEXTS, LABELS, strict=True)):
            batch = processor([text], [labels])
            logits = model(**batch).logits
            inputs = {k: v.tolist() for k, v in batch.items() if k in MODEL_INPUTS}
            cases.append({"name": f"text{i}", "inputs": inputs, "logits": logits.tolist()})
    path = out / name
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "expected.json").write_text(json.dumps({"cases": cases}))
    return path


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [str(save_case(name, options, Path(tmp))) for name, options in CONFIGS.items()]
        script = REPO / "scripts" / "official" / "make_fixtures.sh"
        done = subprocess.run(["bash", str(script), "--roundtrip", *dirs, "--out", str(REPORT)], check=False)
        report = json.loads(REPORT.read_text())
        for ckpt in report["checkpoints"]:  # temp paths mean nothing later; keep the config names
            ckpt["checkpoint"] = Path(ckpt["checkpoint"]).name
        REPORT.write_text(json.dumps(report, indent=1) + "\n")
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
