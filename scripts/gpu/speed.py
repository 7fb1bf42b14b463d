"""GPU speed, paper protocol (2.4): batch 1, labels 1..128, text lengths 64/256/512 tokens, 10 passes after warm-up.

Same checkpoint, same GPU, one process per system, run back to back by scripts/gpu/check.sh:
    python scripts/gpu/speed.py make DIR                 # a DeBERTa-v3-base-shaped random uni-encoder, saved by us
    python scripts/gpu/speed.py ours DIR OUT.json        # our ZeroShotPipeline
    python scripts/gpu/speed.py official DIR OUT.json    # official gliclass 0.1.21 pipeline (its own PYTHONPATH)
Random weights are fine for timing: the work per pass does not depend on the values.
"""

from __future__ import annotations

import json
import sys
import time

import torch

LABEL_COUNTS = [1, 2, 4, 8, 16, 32, 64, 128]
LENGTHS = [64, 256, 512]
PASSES = 10
WORDS = ["the", "movie", "was", "good", "but", "the", "service", "in", "the", "hotel", "was", "bad", "and", "food"]


def text_of(tokenizer, n_tokens: int) -> str:
    words, i = [], 0
    while len(tokenizer(" ".join(words))["input_ids"]) < n_tokens:
        words.append(WORDS[i % len(WORDS)])
        i += 1
    return " ".join(words)


def labels_of(k: int) -> list[str]:
    return [f"topic {i}" for i in range(k)]


def spin_up(seconds: float = 3.0) -> None:
    """Run the GPU hot first: an idle H200 sits at a low clock and ramps up over the first timed cells."""
    x = torch.randn(4096, 4096, device="cuda")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        x = (x @ x).clamp_(-1, 1)
    torch.cuda.synchronize()


def timed(call, text: str, labels: list[str]) -> float:
    for _ in range(3):  # warm-up
        call(text, labels)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(PASSES):
        call(text, labels)
    torch.cuda.synchronize()
    return PASSES / (time.perf_counter() - start)


def make(path: str) -> None:
    sys.path.insert(0, ".")
    from gliclass import build_model

    spec = dict(
        model_type="deberta-v2", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, relative_attention=True, position_buckets=256,
        pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
    )  # fmt: skip
    model, processor = build_model(spec, initializer_range=0.02)
    model.save_pretrained(path)
    processor.save_pretrained(path)


def run(system: str, path: str, out: str) -> None:
    if system == "ours":
        sys.path.insert(0, ".")
        from gliclass.pipeline import ZeroShotPipeline

        pipe = ZeroShotPipeline.from_pretrained(path, device="cuda", batch_size=1, multi_label=True)
        tokenizer = pipe.processor.tokenizer

        def call(text, labels):
            return pipe(text, labels)

        def forward_only(text, labels):  # the model alone, inputs prepared outside the timed loop
            batch = {k: v.to("cuda") for k, v in pipe.processor([text], [labels]).items()}
            return lambda *_: pipe.model(**batch)
    else:
        from transformers import AutoTokenizer

        from gliclass import GLiClassModel, ZeroShotClassificationPipeline  # the official package here

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = GLiClassModel.from_pretrained(path).to("cuda").eval()
        pipe = ZeroShotClassificationPipeline(
            model, tokenizer, classification_type="multi-label", device="cuda:0", progress_bar=False
        )

        def call(text, labels):
            return pipe(text, labels, threshold=0.5)

        def forward_only(text, labels):
            inputs = pipe.pipe.prepare_inputs([text], labels, same_labels=True)
            return lambda *_: model(**inputs, max_num_classes=len(labels))

    spin_up()
    rows = []
    for length in LENGTHS:
        text = text_of(tokenizer, length)
        for k in LABEL_COUNTS:
            with torch.inference_mode():
                row = {"length": length, "labels": k, "ex_per_s": timed(call, text, labels_of(k))}
                if k in (1, 8, 128):  # where the time goes: the model alone vs the whole pipeline call
                    row["model_only_ex_per_s"] = timed(forward_only(text, labels_of(k)), text, labels_of(k))
                rows.append(row)
            print(system, rows[-1], flush=True)
    with open(out, "w") as f:
        json.dump({"system": system, "device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        run(sys.argv[1], sys.argv[2], sys.argv[3])
