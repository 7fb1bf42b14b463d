"""Issue 12 items 2, 7, 8 and 10: the contrastive loss without an [M, N, D] copy, the RoBERTa/XLM-R position budget,
reserved tokens in user input, and the trained loss in the exported config."""

from __future__ import annotations

import importlib.util
import json
import re
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import TINY_BACKBONES, tiny_model, tiny_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoConfig

import gliclass
from gliclass import GLiClassConfig, GLiClassModel, GLiClassProcessor, ReservedTokenError, build_model
from gliclass.modeling.losses import GLiClassLoss, sequence_contrastive_loss
from gliclass.pipeline import ZeroShotPipeline
from gliclass.processing import backbone_position_limit
from gliclass.training.lora import export_model, trained_loss
from gliclass.training.module import GLiClassModule
from gliclass.training.ppo import PPOModule

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = ("<<LABEL>>", "<<SEP>>", "<<EXAMPLE>>")
TEXT = "the movie was good but the food was bad"
LABELS = ["positive", "negative"]


def load_bench():
    path = ROOT / "scripts" / "bench_contrastive_memory.py"
    spec = importlib.util.spec_from_file_location("bench_contrastive_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


# ------------------------------------------------------------------------------ item 2: contrastive loss memory
def random_case(seed: int, batch: int, length: int, dim: int, padded: bool):
    gen = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, length, dim, generator=gen)
    if not padded:
        return embeddings, None
    lengths = torch.randint(0, length + 1, (batch,), generator=gen)
    lengths[0] = length  # one full row, and (seed permitting) empty ones
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    mask[-1] = torch.rand(length, generator=gen) < 0.5  # holes in the middle too, not only right padding
    return embeddings, mask


@pytest.mark.parametrize(
    "seed,shape,padded",
    [(0, (2, 5, 8), False), (1, (3, 7, 16), True), (2, (4, 12, 6), True), (3, (1, 1, 4), False), (4, (5, 9, 3), True)],
)
def test_token_contrastive_equals_the_per_position_copy_formulation(seed, shape, padded):
    embeddings, mask = random_case(seed, *shape, padded)
    new_input = embeddings.clone().requires_grad_()
    old_input = embeddings.clone().requires_grad_()
    new = sequence_contrastive_loss(new_input, mask)
    old = bench.per_position_copy_loss(old_input, mask)
    new.backward()
    old.backward()
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new_input.grad, old_input.grad, rtol=1e-5, atol=1e-7)


class LargestTensor(TorchDispatchMode):
    """Records the most elements any op output holds (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple | list) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_token_contrastive_builds_no_per_position_copy():
    batch, length, dim = 2, 16, 64
    embeddings = torch.randn(batch, length, dim, requires_grad=True)
    with LargestTensor() as tracker:
        sequence_contrastive_loss(embeddings).backward()
    # the states [B, N, D] or the similarities [B, N, N]; the old copy held M*N*D = B*N*N*D elements
    assert tracker.largest <= batch * length * max(length, dim)
    with LargestTensor() as old:
        bench.per_position_copy_loss(embeddings).backward()
    assert old.largest == batch * length * length * dim  # the tracker does see the copy


BENCH_ARGS = ["--batch=2", "--length=16", "--dim=8", "--device=cpu"]


def test_memory_benchmark_measures_both_formulations_alike():
    old, new = (bench.measure(variant, 2, 16, 8, "cpu") for variant in bench.VARIANTS)
    assert new["loss"] == pytest.approx(old["loss"], rel=1e-6)
    assert old["peak_bytes"] >= 0 and new["peak_bytes"] >= 0


def test_memory_benchmark_writes_results_only_from_a_clean_tree(tmp_path, monkeypatch):
    record = bench.run_record(bench.parse_args(BENCH_ARGS), "")
    monkeypatch.setattr(bench, "run_variant", lambda variant, _: {"peak_bytes": 1024**3, "seconds": 1.0, "loss": 2.0})
    monkeypatch.setattr(bench, "run_record", lambda *_: {**record, "git_commit": "abc1234+dirty"})
    bench.main([*BENCH_ARGS, f"--out={tmp_path / 'dirty'}"])
    assert not (tmp_path / "dirty").exists()  # an uncommitted tree leaves experiments/results alone
    bench.main([*BENCH_ARGS, f"--out={tmp_path / 'forced'}", "--allow-dirty"])
    payload = json.loads((tmp_path / "forced" / "contrastive_memory.json").read_text())
    assert payload["shape"] == [2, 16, 8] and payload["run"]["git_commit"] == "abc1234+dirty"
    assert "python scripts/bench_contrastive_memory.py --batch=2" in payload["run"]["command"]
    assert "| per-position copy (old) | 1.000 |" in (tmp_path / "forced" / "contrastive_memory.md").read_text()
    monkeypatch.setattr(bench, "run_record", lambda *_: {**record, "git_commit": "abc1234"})
    bench.main([*BENCH_ARGS, f"--out={tmp_path / 'clean'}"])
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == [
        "contrastive_memory.json",
        "contrastive_memory.md",
    ]


@pytest.mark.slow
def test_memory_benchmark_runs_each_formulation_in_its_own_process(tmp_path):
    results = bench.main([*BENCH_ARGS, f"--out={tmp_path}", "--allow-dirty"])
    old, new = (results[v] for v in bench.VARIANTS)
    assert new["loss"] == pytest.approx(old["loss"], rel=1e-6) and old["peak_bytes"] > 0
    assert (tmp_path / "contrastive_memory.md").is_file()


# ------------------------------------------------------------------------------ item 7: position budget
@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "camembert"])
def test_padding_offset_backbones_hold_two_positions_fewer_than_they_report(model_type):
    # the hub configs of roberta-base / xlm-roberta-base: 514 positions, padding id 1, positions start at 2
    config = AutoConfig.for_model(model_type, max_position_embeddings=514, pad_token_id=1)
    assert backbone_position_limit(config) == 512
    bert = AutoConfig.for_model("bert", max_position_embeddings=512, pad_token_id=0)
    assert backbone_position_limit(bert) == 512  # positions from 0: no offset


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_a_text_at_the_roberta_position_limit_scores(model_type):
    spec = {**TINY_BACKBONES["bert"], "model_type": model_type, "max_position_embeddings": 66}
    torch.manual_seed(0)
    model, processor = build_model(spec, tokenizer=tiny_tokenizer())
    model.eval()
    pad = model.config.encoder_config.pad_token_id
    assert processor.budget == 66 - pad - 1  # positions run pad+1 .. 65
    text = " ".join(TEXT.split() * 20)
    batch = processor([text, "good"], [LABELS, LABELS])
    assert batch["input_ids"].shape[1] == processor.budget  # the text was cut to the usable positions, no more
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.isfinite(logits).all() and logits.shape == (2, 2)
    # one token more than the budget is what the backbone cannot embed (what the old budget of 66 produced)
    over = torch.cat([batch["input_ids"][:1], batch["input_ids"][:1, -1:]], dim=1)
    with pytest.raises((IndexError, RuntimeError)):
        model.model.encoder_model(input_ids=over)


# ------------------------------------------------------------------------------ item 8: reserved tokens
PLACES = {
    "text": lambda token: dict(text=f"good {token} movie"),
    "label": lambda token: dict(labels=["positive", f"neg{token}ative"]),
    "prompt": lambda token: dict(prompt=f"what is {token} the sentiment"),
    "example text": lambda token: dict(examples=[{"text": f"great {token}", "labels": ["positive"]}]),
    "example label": lambda token: dict(examples=[{"text": "great", "labels": [f"pos{token}"]}]),
}
WHERE = {
    "text": "text 0",
    "label": "label 'neg",
    "prompt": "the prompt",
    "example text": "few-shot example 0 text",
    "example label": "few-shot example 0 labels",
}


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("token", SPECIAL)
@pytest.mark.parametrize("arch", ["uni-encoder", "bi-encoder"])
def test_reserved_tokens_in_user_input_are_rejected_by_name(arch, token, place):
    _, processor = tiny_model(architecture_type=arch)
    inputs = {"text": TEXT, "labels": LABELS, **PLACES[place](token)}
    message = rf"{re.escape(WHERE[place])}.*contains the reserved token '{re.escape(token)}'"
    with pytest.raises(ReservedTokenError, match=message):
        processor.encode(inputs["text"], inputs["labels"], inputs.get("prompt"), inputs.get("examples"))


@pytest.mark.parametrize("place", list(PLACES))
def test_the_pipeline_rejects_reserved_tokens_before_scoring(place):
    model, processor = tiny_model()
    pipe = ZeroShotPipeline(model, processor)
    inputs = {"text": TEXT, "labels": LABELS, **PLACES[place]("<<SEP>>")}
    with pytest.raises(ReservedTokenError, match="reserved token '<<SEP>>'"):
        pipe(inputs["text"], inputs["labels"], prompt=inputs.get("prompt"), examples=inputs.get("examples"))


def test_reserved_token_error_is_a_value_error_and_lookalikes_pass():
    assert issubclass(ReservedTokenError, ValueError) and gliclass.ReservedTokenError is ReservedTokenError
    _, processor = tiny_model()
    special = set(processor.tokenizer.convert_tokens_to_ids(list(SPECIAL)))
    text = "a <<sep>> b << LABEL >> c <Example>"  # not the tokens: the tokenizer matches them exactly
    ids = processor.encode(text, LABELS)["input_ids"]
    assert ids.count(processor.config.class_token_index) == len(LABELS)
    assert len([i for i in ids if i in special]) == len(LABELS) + 1  # the label markers and the one <<SEP>>


# ------------------------------------------------------------------------------ item 10: the loss in config.json
TRAINED = dict(
    focal_alpha=0.7,
    focal_gamma=1.0,
    label_smoothing=0.05,
    token_contrastive_coef=0.1,
    label_contrastive_coef=0.3,
    cross_entropy_coef=0.5,
)


def test_export_writes_the_loss_the_model_was_trained_with(tmp_path):
    model, processor = tiny_model()
    module = GLiClassModule(model, GLiClassLoss(**TRAINED), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    batch = processor([TEXT], [LABELS])
    with torch.no_grad():
        expected = model(**batch).logits
    export_model(module.model, tmp_path, processor, loss=trained_loss(module))

    written = json.loads((tmp_path / "config.json").read_text())
    loss_fields = (written["focal_loss_alpha"], written["focal_loss_gamma"], written["contrastive_loss_coef"])
    assert loss_fields == (0.7, 1.0, 0.3)
    assert written["training_loss"] == {"classification": "focal", "classification_weight": 1.0, **TRAINED}
    config = GLiClassConfig.from_pretrained(tmp_path)
    assert (config.focal_loss_alpha, config.focal_loss_gamma, config.contrastive_loss_coef) == (0.7, 1.0, 0.3)
    assert model.config.focal_loss_alpha == 0.5  # the live model's config is left alone
    reloaded = GLiClassModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        got = reloaded(**GLiClassProcessor.from_pretrained(tmp_path)([TEXT], [LABELS])).logits
    torch.testing.assert_close(got, expected)


def test_ppo_exports_keep_the_loss_fields_of_the_starting_model(tmp_path):
    model, processor = tiny_model(focal_loss_alpha=0.7, contrastive_loss_coef=0.2)
    module = PPOModule(model, loss=GLiClassLoss(), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    assert trained_loss(module) is None  # PPO's `loss` only scores validation
    export_model(module.model, tmp_path, processor, loss=trained_loss(module))
    written = json.loads((tmp_path / "config.json").read_text())
    assert (written["focal_loss_alpha"], written["contrastive_loss_coef"]) == (0.7, 0.2)
    assert "training_loss" not in written


def test_a_run_exports_its_configured_loss(tmp_path):
    from test_train_run import compose_train, run

    overrides = ["data=tiny", "backbone=tiny_bert", "debug=fdr", "export=true", "test=false", "loss=focal_contrastive"]
    overrides += ["loss.focal_alpha=0.7", "loss.focal_gamma=1.5", "loss.label_contrastive_coef=0.25"]
    run.train(compose_train(tmp_path, overrides))
    written = json.loads((tmp_path / "model" / "config.json").read_text())
    loss_fields = (written["focal_loss_alpha"], written["focal_loss_gamma"], written["contrastive_loss_coef"])
    assert loss_fields == (0.7, 1.5, 0.25)
    assert written["training_loss"]["token_contrastive_coef"] == 0.1  # focal_contrastive.yaml
