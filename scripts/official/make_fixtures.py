"""Reference fixtures from the official ``gliclass==0.1.21`` package.

Runs INSIDE the official package's own virtual environment (see ``make_fixtures.sh``); it must never import this
repository's ``gliclass``. Modes:

* default: build tiny random GLiClass checkpoints with the official package for every config in ``CONFIGS``, save
  them with ``save_pretrained`` and record the inputs the official pipelines build plus the logits/scores the official
  model gives, under ``tests/fixtures/official/<config_name>/``; ``tests/fixtures/official/index.json`` lists them,
  the configs the official package cannot run and the package versions.
* ``--roundtrip DIR...``: load checkpoints written by OUR package with the official ``GLiClassModel.from_pretrained``,
  run the inputs stored in each ``DIR/expected.json`` and compare with the logits stored there; writes
  ``roundtrip.json`` (max abs diff per checkpoint, pass/fail as torch.allclose at ``--atol``/``--rtol``).

Everything is seeded per config (seed = crc32 of the config name), single-threaded and offline, so two runs give
byte-identical files.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import traceback
import zlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Never pick up this repository's own `gliclass` package (the official one has the same import name).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in {REPO_ROOT, REPO_ROOT / "scripts" / "official"}]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from gliclass.pipeline import (  # noqa: E402
    BaseZeroShotClassificationPipeline,
    BiEncoderZeroShotClassificationPipeline,
    EncoderDecoderZeroShotClassificationPipeline,
    UniEncoderZeroShotClassificationPipeline,
)
from torch import nn  # noqa: E402
from transformers import BertConfig, BertTokenizer, DebertaV2Config, ModernBertConfig, T5Config  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import gliclass  # noqa: E402
from gliclass import GLiClassModel, GLiClassModelConfig  # noqa: E402

if Path(gliclass.__file__).resolve().is_relative_to(REPO_ROOT / "gliclass"):
    raise SystemExit(
        f"refusing to run: imported this repository's gliclass ({gliclass.__file__}), not the official one"
    )

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
torch.set_num_threads(1)

OFFICIAL_VERSION = "0.1.21"
VOCAB_FILE = REPO_ROOT / "tests" / "fixtures" / "tiny_vocab.txt"
OUT_DIR = REPO_ROOT / "tests" / "fixtures" / "official"
SPECIAL_TOKENS = ["<<LABEL>>", "<<SEP>>", "<<EXAMPLE>>"]

TEXTS = [
    "i love this movie",
    "the food was terrible and the service was bad",
    "the new phone has a great screen but the battery is bad and the price is not good",
]
LABELS = ["positive", "negative", "neutral"]
RAGGED_LABELS = [
    ["positive", "negative"],
    ["food", "service", "price", "quality"],
    ["phone", "battery", "screen"],
]
PROMPT = "what is the sentiment of this review"
EXAMPLES = [
    {"text": "i hate this film", "labels": ["negative"]},
    {"text": "great product and good price", "labels": ["positive", "neutral"]},
]
THRESHOLD = 0.5

# ---------------------------------------------------------------------------------------------------------------------
# Configs. `gliclass` holds the GLiClassModelConfig kwargs that differ from the official defaults.
# ---------------------------------------------------------------------------------------------------------------------
CONFIGS: list[dict] = []

# Behaviour of the official package that these fixtures pin down (checked while writing this script).
OFFICIAL_QUIRKS = [
    "mlp and hopfield scorers ignore scorer_mlp_hidden_size (the kwarg name does not match): their MLP is always "
    "in->256->128->1; weighted-dot uses 4*D; only cross-attn uses scorer_mlp_hidden_size",
    "logit_scale is used raw: uni-encoder and encoder-decoder multiply by it only when normalize_features; bi-encoder "
    "and bi-encoder-fused ALWAYS multiply by it, and set slots with labels_mask == 0 to -1e3",
    "the text pooler is called without the attention mask: last/avg/max/sum/rms/abs_max/abs_avg depend on padding "
    "(see batch_vs_single_max_diff); the bi-encoder label pooler is unmasked too",
    "encoder-decoder ignores max_num_classes (it goes to the T5 forward **kwargs): logits always have "
    "config.max_num_classes (25) slots; slots without a label all hold the same value",
    "encoder-decoder: text -> T5 encoder; '<<LABEL>>l1...<<SEP>>[prompt]' tokenized with [CLS]/[SEP] is fed as "
    "decoder_input_ids as is (no shift, no start token) with a 4D padding-only mask, so decoder self-attention is "
    "bidirectional; label vectors = decoder states at <<LABEL>>, text = pooled encoder states",
    "encoder-decoder load bug: decoder.embed_tokens is not re-tied to shared on from_pretrained (random init)",
    "bi-encoder-fused: label encoder -> pooler -> biencoder_projector -> classes_projector (-> L2 norm) replace the "
    "input embeddings at the <<LABEL>> positions of 'text<<LABEL>>...<<SEP>>'; the encoder outputs at those "
    "positions are the class vectors as is (no projector after); text = pooled -> text_projector",
    "bi-encoder: text input is the text alone (or 'prompt text'); labels are tokenized as a batch padded to the "
    "longest label; ragged label lists crash (labels padded to max_length 1024, then torch.stack)",
    "vocab: GLiClassModelConfig takes vocab_size from the backbone (260) so class/text/example ids are 260/261/262; "
    "model.resize_token_embeddings(263) then sets config.vocab_size and encoder_config.vocab_size to 263 (ids stay); "
    "the plain bi-encoder cannot resize",
    "use_segment_embeddings: segment 0 before the first <<SEP>>, 1 from it to the end; with <<EXAMPLE>> present the "
    "example start is found with argmin, so every token gets segment 2",
    "class_token_pooling average: label k = mean over tokens from its <<LABEL>> to the next one; the last label runs "
    "to the end of the sequence (<<SEP>>, prompt, examples, final [SEP]; the text too with prompt_first), padding "
    "excluded, cut at <<SEP>> only with extract_text_features",
    "extract_text_features: text states = states from the first <<SEP>> on, moved to position 0 and zero-filled; "
    "avg pooling still divides by the full length",
    "uni-encoder passes token_type_ids (from the tokenizer) through **kwargs to the backbone; use_lstm runs a packed "
    "bidirectional LSTM (D/2 per direction) over the text states only",
]


def _add(name, arch="uni-encoder", backbone="bert", labels="same", prompt=None, examples=None, note="", **gli):
    CONFIGS.append(
        {
            "name": name,
            "architecture_type": arch,
            "backbone": backbone,
            "labels": labels,
            "prompt": prompt,
            "examples": examples,
            "note": note,
            "gliclass": gli,
        }
    )


for _pool in ["first", "last", "avg", "max", "sum", "rms", "abs_max", "abs_avg"]:
    _add(f"uni_bert_{_pool}_simple", pooling_strategy=_pool, scorer_type="simple")
for _scorer in ["weighted-dot", "mlp", "hopfield"]:
    _add(
        f"uni_bert_first_{_scorer.replace('-', '_')}",
        pooling_strategy="first",
        scorer_type=_scorer,
        scorer_mlp_hidden_size=64,
        scorer_num_heads=4,
    )
_add(
    "uni_bert_pass_cross_attn",
    pooling_strategy="pass",
    scorer_type="cross-attn",
    scorer_num_heads=4,
    scorer_mlp_hidden_size=64,
    note="cross-attn needs pooling 'pass' ([B,L,D] text states); the scorer masks keys with the attention mask",
)
_add("uni_bert_first_simple_normalize", normalize_features=True, note="L2-normalised features, logits * logit_scale")
_add("uni_bert_first_simple_prompt_first", prompt_first=True, prompt=PROMPT, note="labels block + prompt, then text")
_add("uni_bert_first_simple_lstm", use_lstm=True)
_add(
    "uni_bert_first_simple_class_avg_prompt",
    class_token_pooling="average",
    prompt=PROMPT,
    note="label vector = mean of its span; the last label's span runs on over <<SEP>>, the prompt and the final [SEP]",
)
_add("uni_bert_first_simple_no_embed_class", embed_class_token=False, note="label vector = state after <<LABEL>>")
_add(
    "uni_bert_first_simple_segments",
    use_segment_embeddings=True,
    note="segment 0 before the first <<SEP>>, 1 from it to the end (padding included)",
)
_add(
    "uni_bert_first_simple_segments_examples",
    use_segment_embeddings=True,
    examples=EXAMPLES,
    note="official _create_segment_ids takes argmin of the <<EXAMPLE>> mask, so with examples every token gets segment 2",
)
_add(
    "uni_bert_avg_simple_extract_text",
    pooling_strategy="avg",
    extract_text_features=True,
    prompt_first=True,
    note="text states gathered from the first <<SEP>> to the end, zero-filled; avg pooling divides by full L",
)
_add(
    "uni_bert_first_simple_examples_prompt_ragged",
    examples=EXAMPLES,
    prompt=PROMPT,
    labels="ragged",
    note="processing features together: prompt and few-shot examples after the labels block, and a different label "
    "list per text (same_labels=False, padded label slots in the batch)",
)
_add("uni_deberta_first_simple", backbone="deberta-v2")
_add("uni_modernbert_first_simple", backbone="modernbert")
_add("bi_bert_first_simple", arch="bi-encoder", backbone="bert", pooling_strategy="first")
_add(
    "bi_bert_avg_simple_prompt",
    arch="bi-encoder",
    backbone="bert",
    pooling_strategy="avg",
    prompt=PROMPT,
    note="text = prompt + ' ' + text; avg pooling (unmasked) also pools the label encoder's padded label tokens",
)
_add("bifused_bert_first_simple", arch="bi-encoder-fused", backbone="bert", pooling_strategy="first")
_add("encdec_t5_first_simple", arch="encoder-decoder", backbone="t5", pooling_strategy="first")

# Configs the official package is documented (or suspected) to fail on: record the exception, make no fixture.
CRASH_CONFIGS: list[dict] = [
    {
        "name": "uni_bert_squeeze_layers",
        "architecture_type": "uni-encoder",
        "backbone": "bert",
        "gliclass": {"squeeze_layers": True},
        "labels": "same",
    },
    {
        "name": "uni_bert_encoder_layer_id_1",
        "architecture_type": "uni-encoder",
        "backbone": "bert",
        "gliclass": {"encoder_layer_id": 1},
        "labels": "same",
    },
    {
        "name": "bi_bert_first_simple_ragged",
        "architecture_type": "bi-encoder",
        "backbone": "bert",
        "gliclass": {"pooling_strategy": "first"},
        "labels": "ragged",
    },
]


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------
def make_tokenizer(model_input_names=None):
    kwargs = {}
    if model_input_names is not None:
        kwargs["model_input_names"] = model_input_names
    tok = BertTokenizer(vocab=str(VOCAB_FILE), **kwargs)
    assert len(tok) == 260, len(tok)
    tok.add_tokens(SPECIAL_TOKENS, special_tokens=True)
    ids = tok.convert_tokens_to_ids(SPECIAL_TOKENS)
    assert ids == [260, 261, 262], ids
    return tok


def backbone_config(kind: str, dims: dict):
    h, layers, heads, inter, pos = (
        dims["hidden"],
        dims["layers"],
        dims["heads"],
        dims["intermediate"],
        dims["positions"],
    )
    if kind == "bert":
        return BertConfig(
            vocab_size=260,
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=pos,
            pad_token_id=0,
        )
    if kind == "deberta-v2":
        # DeBERTa-v3 style: relative attention with log buckets, no absolute positions, no token types.
        return DebertaV2Config(
            vocab_size=260,
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=pos,
            relative_attention=True,
            position_buckets=16,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            type_vocab_size=0,
            pad_token_id=0,
        )
    if kind == "modernbert":
        return ModernBertConfig(
            vocab_size=260,
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=pos,
            global_attn_every_n_layers=2,
            local_attention=8,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
        )
    if kind == "t5":
        return T5Config(
            vocab_size=260,
            d_model=h,
            d_kv=h // heads,
            d_ff=inter,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            pad_token_id=0,
            eos_token_id=3,
            decoder_start_token_id=0,
        )
    raise ValueError(kind)


def randomize_(model: nn.Module) -> None:
    """Re-draw every weight with O(1)-scale values so that logits are O(1) (the official init gives |logit| ~ 1e-4,
    which would make any parity check at atol 1e-5 meaningless). logit_scale keeps its official init value."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            if id(p) in embedding_weights:
                p.normal_(0.0, 1.0)
            elif p.dim() == 1:
                if name.endswith("bias"):
                    p.normal_(0.0, 0.1)
                else:  # norm weights
                    p.normal_(0.0, 0.1).add_(1.0)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))


def build_model(spec: dict, dims: dict, tok):
    gli = dict(spec["gliclass"])
    arch = spec["architecture_type"]
    enc_cfg = backbone_config(spec["backbone"], dims)
    kwargs = {
        "encoder_config": enc_cfg,
        "encoder_model": f"tiny-random-{spec['backbone']}",
        "architecture_type": arch,
        "problem_type": "multi_label_classification",
        **gli,
    }
    if arch in {"bi-encoder", "bi-encoder-fused"}:
        kwargs["label_model_config"] = backbone_config(spec["backbone"], dims)
        kwargs["label_model_name"] = f"tiny-random-{spec['backbone']}"
    config = GLiClassModelConfig(**kwargs)
    model = GLiClassModel(config)
    if arch != "bi-encoder":  # the official resize raises NotImplementedError for the plain bi-encoder
        model.resize_token_embeddings(len(tok))
    randomize_(model)
    model.eval()
    return model


class RecordingTokenizer:
    """Wraps the tokenizer the official pipeline calls, to record the exact strings it tokenizes."""

    def __init__(self, tok):
        self._tok = tok
        self.calls = []

    def __call__(self, text, *args, **kwargs):
        self.calls.append(copy.deepcopy(text))
        return self._tok(text, *args, **kwargs)

    def __getattr__(self, item):
        return getattr(self._tok, item)


def make_pipeline(model, tok):
    arch = model.config.architecture_type
    common = {
        "max_classes": 25,
        "max_length": 1024,
        "classification_type": "multi-label",
        "device": "cpu",
        "progress_bar": False,
    }
    if arch == "uni-encoder":
        return UniEncoderZeroShotClassificationPipeline(model, tok, **common)
    if arch in {"encoder-decoder", "encoder-decoder-cls"}:
        return EncoderDecoderZeroShotClassificationPipeline(model, tok, **common)
    if arch in {"bi-encoder", "bi-encoder-fused"}:
        # Its __init__ loads the label tokenizer from config.label_model_name (a hub id); build it by hand instead.
        pipe = BiEncoderZeroShotClassificationPipeline.__new__(BiEncoderZeroShotClassificationPipeline)
        BaseZeroShotClassificationPipeline.__init__(pipe, model, tok, **common)
        pipe.labels_tokenizer = tok
        return pipe
    raise ValueError(arch)


def apply_official_load_workarounds(model) -> list[str]:
    """Undo load bugs of the official package so the stored logits are those of the checkpoint's weights.

    T5 encoder-decoder: the checkpoint holds only `shared.weight` (encoder/decoder `embed_tokens` are tied to it when
    saving), but on `GLiClassModel.from_pretrained` the official `tie_weights` re-ties only `encoder.embed_tokens`;
    `decoder.embed_tokens` is reported MISSING and randomly initialised, so each official load gives different logits.
    """
    notes = []
    ed = getattr(model.model, "encoder_decoder_model", None)
    if ed is not None and hasattr(ed, "shared") and hasattr(ed, "decoder"):
        dec = getattr(ed.decoder, "embed_tokens", None)
        if dec is not None and dec.weight is not ed.shared.weight:
            dec.weight = ed.shared.weight
            notes.append("re-tied encoder_decoder_model.decoder.embed_tokens.weight to shared.weight after loading")
    return notes


def load_official(path: Path):
    model, info = GLiClassModel.from_pretrained(path, output_loading_info=True)
    model.eval()
    notes = apply_official_load_workarounds(model)
    loading = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    return model, loading, notes


def tensors_to_lists(inputs) -> dict:
    return {k: v.tolist() for k, v in inputs.items()}


def run_case(pipe, model, texts, labels, same_labels, examples, prompt):
    """Mirror one batch of the official pipeline's __call__: prepare_inputs, then model(**inputs, max_num_classes)."""
    text_rec = RecordingTokenizer(pipe.tokenizer)
    pipe.tokenizer = text_rec
    label_rec = None
    if hasattr(pipe, "labels_tokenizer"):
        label_rec = RecordingTokenizer(pipe.labels_tokenizer)
        pipe.labels_tokenizer = label_rec
    try:
        inputs = pipe.prepare_inputs(texts, labels, same_labels, examples=examples, prompt=prompt)
    finally:
        pipe.tokenizer = text_rec._tok
        if label_rec is not None:
            pipe.labels_tokenizer = label_rec._tok
    max_num_classes = pipe._resolve_max_num_classes(labels, same_labels)
    with torch.no_grad():
        out = model(**inputs, max_num_classes=max_num_classes)
    strings = {"tokenizer_calls": text_rec.calls}
    if label_rec is not None:
        strings["label_tokenizer_calls"] = label_rec.calls
    return {
        "input_strings": strings,
        "inputs": tensors_to_lists(inputs),
        "model_kwargs": {"max_num_classes": max_num_classes},
        "logits": out.logits.tolist(),
    }


def official_crash_text(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = next(
        (f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(tb) if "gliclass" in f.filename), None
    )
    return f"{type(exc).__name__}: {exc}" + (f" (official {where})" if where else "")


def labels_for(spec):
    if spec["labels"] == "ragged":
        return [list(x) for x in RAGGED_LABELS], False
    return list(LABELS), True


def config_essentials(config) -> dict:
    keys = [
        "architecture_type",
        "pooling_strategy",
        "class_token_pooling",
        "scorer_type",
        "scorer_num_heads",
        "scorer_mlp_hidden_size",
        "normalize_features",
        "logit_scale_init_value",
        "extract_text_features",
        "prompt_first",
        "use_lstm",
        "embed_class_token",
        "use_segment_embeddings",
        "squeeze_layers",
        "encoder_layer_id",
        "vocab_size",
        "class_token_index",
        "text_token_index",
        "example_token_index",
        "hidden_size",
        "max_num_classes",
        "problem_type",
        "encoder_model_name",
        "label_model_name",
    ]
    ess = {k: getattr(config, k, None) for k in keys}
    ess["encoder_model_type"] = config.encoder_config.model_type
    ess["encoder_vocab_size"] = config.encoder_config.get_text_config().vocab_size
    if config.label_model_config is not None:
        ess["label_model_type"] = config.label_model_config.model_type
        ess["label_vocab_size"] = config.label_model_config.vocab_size
    return ess


def _is_flat(obj) -> bool:
    """Scalars, lists of scalars and lists of lists of scalars go on one line."""
    if isinstance(obj, dict):
        return False
    if isinstance(obj, list):
        return all(
            not isinstance(x, (dict, list))
            or (isinstance(x, list) and _is_flat(x) and all(not isinstance(y, (dict, list)) for y in x))
            for x in obj
        )
    return True


def _format_json(obj, indent: int = 0) -> str:
    pad, inner = " " * indent, " " * (indent + 1)
    if _is_flat(obj):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_format_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = [inner + _format_json(v, indent + 1) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def write_json(path: Path, obj) -> None:
    text = _format_json(obj)
    assert json.loads(text) == json.loads(json.dumps(obj))
    path.write_text(text + "\n")


def max_abs_diff_rows(a_rows, b_rows, widths):
    diff = 0.0
    for a, b, w in zip(a_rows, b_rows, widths, strict=True):
        for x, y in zip(a[:w], b[:w], strict=True):
            diff = max(diff, abs(x - y))
    return diff


def make_fixture(spec: dict, dims: dict, out_root: Path) -> dict:
    name = spec["name"]
    torch.manual_seed(zlib.crc32(name.encode()))
    needs_no_token_types = spec["backbone"] in {"modernbert", "t5"}
    tok = make_tokenizer(["input_ids", "attention_mask"] if needs_no_token_types else None)
    model = build_model(spec, dims, tok)
    config = model.config
    assert tok.convert_tokens_to_ids("<<LABEL>>") == config.class_token_index
    assert tok.convert_tokens_to_ids("<<SEP>>") == config.text_token_index
    assert tok.convert_tokens_to_ids("<<EXAMPLE>>") == config.example_token_index

    labels, same = labels_for(spec)
    in_memory = run_case(make_pipeline(model, tok), model, TEXTS, labels, same, spec["examples"], spec["prompt"])

    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    for f in out.iterdir():
        f.chmod(0o644)

    # Work from the reloaded checkpoint, exactly as a user of the official package would (plus the load workarounds);
    # it must reproduce the in-memory model bit for bit.
    model, loading, workarounds = load_official(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tok) == 263
    if config.architecture_type != "bi-encoder":
        emb = (
            model.get_input_embeddings()
            if config.architecture_type != "bi-encoder-fused"
            else (model.model.encoder_model.get_input_embeddings())
        )
        assert emb.num_embeddings == 263, emb.num_embeddings
    pipe = make_pipeline(model, tok)

    per_text_labels = [labels] * len(TEXTS) if same else labels
    prompt, examples = spec["prompt"], spec["examples"]

    single = []
    for i, text in enumerate(TEXTS):
        lab = labels if same else [labels[i]]
        case = run_case(pipe, model, [text], lab, same, examples, prompt)
        single.append({"text_index": i, **case})
    batch = run_case(pipe, model, TEXTS, labels, same, examples, prompt)
    if batch["logits"] != in_memory["logits"] or batch["inputs"] != in_memory["inputs"]:
        raise AssertionError(f"{name}: the reloaded official checkpoint does not reproduce the in-memory model")
    widths = [len(lbls) for lbls in per_text_labels]
    batch["batch_vs_single_max_diff"] = max_abs_diff_rows(batch["logits"], [s["logits"][0] for s in single], widths)
    batch["official_pooling_mask_correct"] = config.pooling_strategy in {"first", "pass"}

    with torch.no_grad():
        scores = pipe(TEXTS, labels, threshold=THRESHOLD, batch_size=8, examples=examples, prompt=prompt)
        all_scores = pipe(
            TEXTS, labels, threshold=THRESHOLD, batch_size=8, examples=examples, prompt=prompt, return_hierarchical=True
        )

    expected = {
        "name": name,
        "official_load_workarounds": workarounds,
        "architecture_type": config.architecture_type,
        "backbone": spec["backbone"],
        "note": spec["note"],
        "pipeline_class": type(pipe).__name__,
        "texts": TEXTS,
        "labels": per_text_labels,
        "labels_ragged": not same,
        "prompt": prompt,
        "examples": examples,
        "special_token_ids": dict(zip(SPECIAL_TOKENS, tok.convert_tokens_to_ids(SPECIAL_TOKENS), strict=True)),
        "single": single,
        "batch": batch,
        "threshold": THRESHOLD,
        "classification_type": "multi-label",
        "pipeline_scores": scores,
        "pipeline_all_scores": all_scores,
    }
    write_json(out / "expected.json", expected)
    files = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    return {
        "name": name,
        "dir": name,
        "backbone": spec["backbone"],
        "seed": zlib.crc32(name.encode()),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "labels_ragged": not same,
        "prompt": prompt is not None,
        "examples": examples is not None,
        "batch_vs_single_max_diff": batch["batch_vs_single_max_diff"],
        "official_pooling_mask_correct": batch["official_pooling_mask_correct"],
        "files": files,
        "official_loading_info": loading,
        "official_load_workarounds": workarounds,
        "config": config_essentials(model.config),
    }


def try_crash(spec: dict, dims: dict) -> dict:
    """Run a config the official package is expected to fail on through its pipeline; record what happens."""
    torch.manual_seed(zlib.crc32(spec["name"].encode()))
    tok = make_tokenizer()
    entry = {
        "name": spec["name"],
        "architecture_type": spec["architecture_type"],
        "backbone": spec["backbone"],
        "config": dict(spec["gliclass"]),
        "labels_ragged": spec["labels"] == "ragged",
    }
    try:
        model = build_model(spec, dims, tok)
        pipe = make_pipeline(model, tok)
        labels, _ = labels_for(spec)
        with torch.no_grad():
            pipe(TEXTS, labels, threshold=THRESHOLD)
        entry["crashed"] = False
        entry["exception"] = None
    except Exception as exc:  # noqa: BLE001 - recording the official failure is the point
        entry["crashed"] = True
        entry["exception"] = official_crash_text(exc)
    return entry


def versions() -> dict:
    import importlib.metadata as md

    return {
        "gliclass": md.version("gliclass"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": md.version("tokenizers"),
        "safetensors": md.version("safetensors"),
    }


def generate(args) -> int:
    v = versions()
    if v["gliclass"] != OFFICIAL_VERSION:
        print(f"warning: official gliclass is {v['gliclass']}, fixtures are specified for {OFFICIAL_VERSION}")
    dims = {
        "hidden": args.hidden_size,
        "layers": args.num_layers,
        "heads": args.num_heads,
        "intermediate": args.intermediate_size,
        "positions": args.max_positions,
    }
    out_root = Path(args.out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    selected = [c for c in CONFIGS if not args.only or c["name"] in args.only]

    covered, failed = [], []
    for spec in selected:
        print(f"[fixtures] {spec['name']}", flush=True)
        try:
            covered.append(make_fixture(spec, dims, out_root))
        except Exception as exc:  # noqa: BLE001 - a config the official package cannot run is recorded and skipped
            shutil.rmtree(out_root / spec["name"], ignore_errors=True)
            failed.append(
                {
                    "name": spec["name"],
                    "architecture_type": spec["architecture_type"],
                    "backbone": spec["backbone"],
                    "config": dict(spec["gliclass"]),
                    "crashed": True,
                    "exception": official_crash_text(exc),
                }
            )
            print(f"  official package failed: {failed[-1]['exception']}", flush=True)
    crashes = [try_crash(spec, dims) for spec in CRASH_CONFIGS if not args.only or spec["name"] in args.only]
    if args.only:
        print("--only given: index.json not rewritten")
        return 0

    # Remove fixture dirs of configs that no longer exist.
    known = {c["name"] for c in covered}
    for d in sorted(out_root.iterdir()):
        if d.is_dir() and d.name not in known:
            shutil.rmtree(d)

    index = {
        "description": "Reference fixtures made with the official gliclass package by scripts/official/make_fixtures.py",
        "versions": v,
        "backbone_dims": dims,
        "tokenizer": {
            "vocab": "tests/fixtures/tiny_vocab.txt (260 tokens), BertTokenizer(vocab=...)",
            "added_special_tokens": dict(zip(SPECIAL_TOKENS, [260, 261, 262], strict=True)),
            "model_input_names": "modernbert/t5 fixtures drop token_type_ids; bert/deberta keep them",
        },
        "weights": "official init, then model.resize_token_embeddings(263) (not for plain bi-encoder), then every "
        "weight re-drawn: embeddings N(0,1), matrices N(0,1/sqrt(fan_in)), biases N(0,0.1), norm weights "
        "1+N(0,0.1); logit_scale kept at 2.6592. Seed = zlib.crc32(config name).",
        "model_call": "logits = model(**batch.inputs, max_num_classes=batch.model_kwargs.max_num_classes).logits "
        "(exactly what the official pipeline __call__ does)",
        "texts": TEXTS,
        "official_quirks": OFFICIAL_QUIRKS,
        "configs": covered,
        "official_crashes": crashes,
        "official_cannot_run": failed,
    }
    write_json(out_root / "index.json", index)
    print(f"[fixtures] {len(covered)} fixtures, {len(failed)} failed configs, {len(crashes)} crash probes")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# Round trip: our checkpoints -> official loader
# ---------------------------------------------------------------------------------------------------------------------
ACCEPTED_INPUTS = {
    "uni-encoder": {"input_ids", "attention_mask", "token_type_ids"},
    "encoder-decoder": {"input_ids", "attention_mask", "token_type_ids", "class_input_ids", "class_attention_mask"},
    "encoder-decoder-cls": {"input_ids", "attention_mask", "token_type_ids", "class_input_ids", "class_attention_mask"},
    "bi-encoder": {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "class_input_ids",
        "class_attention_mask",
        "labels_mask",
    },
    "bi-encoder-fused": {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "class_input_ids",
        "class_attention_mask",
        "labels_mask",
    },
}


def roundtrip_cases(expected: dict) -> list[tuple[str, dict]]:
    """`inputs`+`logits` at top level (our format), or a `cases` list, or the official fixture's single/batch."""
    if "inputs" in expected and "logits" in expected:
        return [("main", expected)]
    if "cases" in expected:
        return [(c.get("name", f"case{i}"), c) for i, c in enumerate(expected["cases"])]
    cases = [(f"single{i}", c) for i, c in enumerate(expected.get("single", []))]
    if "batch" in expected:
        cases.append(("batch", expected["batch"]))
    if not cases:
        raise ValueError("expected.json holds neither inputs/logits, cases, nor single/batch")
    return cases


def roundtrip_one(ckpt: Path, atol: float, rtol: float) -> dict:
    expected = json.loads((ckpt / "expected.json").read_text())
    model, loading, workarounds = load_official(ckpt)
    arch = model.config.architecture_type
    accepted = ACCEPTED_INPUTS.get(arch, set())
    results = []
    for name, case in roundtrip_cases(expected):
        inputs = {k: torch.tensor(v, dtype=torch.long) for k, v in case["inputs"].items() if k in accepted}
        ignored = sorted(set(case["inputs"]) - accepted)
        ref = torch.tensor(case["logits"], dtype=torch.float32)
        kwargs = dict(case.get("model_kwargs") or {})
        kwargs.setdefault("max_num_classes", ref.shape[-1])
        with torch.no_grad():
            got = model(**inputs, **kwargs).logits.float()
        mask = case["inputs"].get("labels_mask")
        width = min(got.shape[-1], ref.shape[-1])
        got_c, ref_c = got[..., :width], ref[..., :width]
        if got.shape != ref.shape:
            shape_note = f"shape official {tuple(got.shape)} vs expected {tuple(ref.shape)}; compared first {width}"
        else:
            shape_note = None
        diff_all = (got_c - ref_c).abs()
        m = torch.ones_like(diff_all, dtype=torch.bool)
        if mask is not None:
            m = torch.tensor(mask, dtype=torch.bool)[..., :width]
        diff = diff_all[m].max().item() if m.any() else 0.0
        # torch.allclose semantics: float32 logits of magnitude ~100 differ by ~1e-5 from kernel choice alone
        close = bool((diff_all <= atol + rtol * ref_c.abs())[m].all())
        results.append(
            {
                "case": name,
                "max_abs_diff": diff,
                "max_abs_diff_all_slots": diff_all.max().item(),
                "close": close,
                "ignored_inputs": ignored,
                "shape_note": shape_note,
            }
        )
    worst = max(r["max_abs_diff"] for r in results)
    return {
        "checkpoint": str(ckpt),
        "architecture_type": arch,
        "max_abs_diff": worst,
        "pass": all(r["close"] for r in results),
        "official_loading_info": loading,
        "official_load_workarounds": workarounds,
        "cases": results,
    }


def roundtrip(args) -> int:
    report = {"versions": versions(), "atol": args.atol, "rtol": args.rtol, "checkpoints": []}
    for d in args.roundtrip:
        try:
            report["checkpoints"].append(roundtrip_one(Path(d), args.atol, args.rtol))
        except Exception as exc:  # noqa: BLE001 - a checkpoint the official package cannot load is a failure to report
            report["checkpoints"].append(
                {"checkpoint": str(d), "pass": False, "max_abs_diff": None, "error": official_crash_text(exc)}
            )
    report["all_pass"] = all(c["pass"] for c in report["checkpoints"])
    write_json(Path(args.out), report)
    for c in report["checkpoints"]:
        print(
            f"{'PASS' if c['pass'] else 'FAIL'} {c['checkpoint']} max_abs_diff={c['max_abs_diff']}"
            + (f" error={c['error']}" if "error" in c else "")
        )
    return 0 if report["all_pass"] else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(OUT_DIR))
    ap.add_argument("--only", nargs="*", help="only these config names (index.json is then left alone)")
    ap.add_argument("--hidden-size", type=int, default=12)
    ap.add_argument("--num-layers", type=int, default=2)
    ap.add_argument("--num-heads", type=int, default=2)
    ap.add_argument("--intermediate-size", type=int, default=24)
    ap.add_argument("--max-positions", type=int, default=128)
    ap.add_argument("--roundtrip", nargs="+", metavar="DIR", help="checkpoints saved by our package to load officially")
    ap.add_argument("--out", default="roundtrip.json", help="--roundtrip report path")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--rtol", type=float, default=1e-5)
    args = ap.parse_args(argv)
    if args.roundtrip:
        return roundtrip(args)
    return generate(args)


if __name__ == "__main__":
    sys.exit(main())
