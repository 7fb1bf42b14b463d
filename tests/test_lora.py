"""LoRA post-training: Table 1 presets, adapters-only training, merged export in the official layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors.torch import load_file

from gliclass import GLiClassModel, GLiClassProcessor
from gliclass.training.lora import apply_lora, export_model, matching_modules, merge_lora
from tests.conftest import tiny_model

CONF = Path(__file__).resolve().parents[1] / "conf" / "lora"
TABLE_1 = {  # paper Table 1 (minilm: ours, for CPU)
    "deberta": (
        384,
        768,
        ["query_proj", "key_proj", "value_proj", "dense", "linear_1", "linear_2", "mlp.0", "mlp.2", "mlp.4"],
    ),
    "modernbert_base": (512, 1024, ["Wqkv", "Wo", "Wi", "linear_1", "linear_2"]),
    "modernbert_large": (768, 1536, ["Wqkv", "Wo", "Wi", "linear_1", "linear_2"]),
    "edge": (1536, 3072, ["Wqkv", "Wo", "Wi", "linear_1", "linear_2", "mlp.0", "mlp.2", "mlp.4"]),
    "minilm": (8, 16, ["query", "key", "value", "dense", "linear_1", "linear_2"]),
}
BACKBONE = {
    "deberta": "deberta",
    "modernbert_base": "modernbert",
    "modernbert_large": "modernbert",
    "edge": "modernbert",
}
TEXTS = ["the team won the game", "the weather is bad today"]
LABELS = [["sports", "weather", "music"], ["weather", "news"]]


def preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))


def adapt(model, name="minilm", **overrides):
    cfg = {**preset(name), **overrides}
    cfg.pop("_target_"), cfg.pop("_partial_")
    return apply_lora(model, **cfg)


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_presets_match_table_1(name):
    cfg = preset(name)
    r, alpha, targets = TABLE_1[name]
    assert (cfg["r"], cfg["alpha"], cfg["target_modules"]) == (r, alpha, targets)
    assert cfg["_target_"] == "gliclass.training.lora.apply_lora"


@pytest.mark.parametrize("name", ["deberta", "edge", "modernbert_base"])
def test_preset_targets_exist_in_their_backbone(name):
    model, _ = tiny_model(BACKBONE[name], scorer_type="mlp")
    for target in preset(name)["target_modules"]:
        assert matching_modules(model, target), target
    adapted = adapt(model, name, r=4, alpha=8)
    assert isinstance(adapted, PeftModel)


def test_missing_targets_are_an_error():
    model, _ = tiny_model()
    with pytest.raises(ValueError, match="no LoRA target module"):
        apply_lora(model, r=4, alpha=8, target_modules=["Wqkv"])


def test_only_adapters_train_and_base_weights_stay_bit_identical():
    model, processor = tiny_model()
    adapted = adapt(model, r=4, alpha=8, dropout=0.0)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in adapted.named_parameters()}
    batch = processor(TEXTS, LABELS)
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    optimizer = torch.optim.AdamW(adapted.parameters(), lr=1e-2, weight_decay=0.1)  # frozen ones included on purpose
    adapted.train()
    mask = batch["labels_mask"]
    for _ in range(5):
        logits = adapted(**batch).logits
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], targets[mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {name for name, param in adapted.named_parameters() if not torch.equal(param, before[name])}
    assert changed and changed <= trainable  # (the unused BERT pooler's adapter gets no gradient)


def test_modules_to_save_train_on_purpose():
    model, _ = tiny_model()
    adapted = adapt(model, r=4, alpha=8, modules_to_save=["scorer"], target_modules=["query", "value"])
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    model, _ = tiny_model(scorer_type="mlp")
    adapted = adapt(model, r=4, alpha=8, modules_to_save=["scorer"], target_modules=["query", "value"])
    assert any("modules_to_save" in n for n, p in adapted.named_parameters() if p.requires_grad)


def test_export_merges_into_a_plain_official_checkpoint(tmp_path):
    model, processor = tiny_model(scorer_type="mlp", initializer_range=0.03)
    adapted = adapt(
        model, "deberta", r=4, alpha=8, dropout=0.0, target_modules=["query", "value", "dense", "linear_1", "mlp.0"]
    )
    with torch.no_grad():  # adapters start as a no-op (B = 0): give them weight so the merge matters
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    adapted.eval()
    batch = processor(TEXTS, LABELS)
    with torch.no_grad():
        expected = adapted(**batch).logits
        with adapted.disable_adapter():
            assert not torch.allclose(expected, adapted(**batch).logits, atol=1e-3)
    path = export_model(adapted, tmp_path / "merged", processor)
    keys = load_file(path / "model.safetensors").keys()
    assert all(k.startswith("model.") for k in keys)
    assert not any("lora_" in k or "base_layer" in k for k in keys)
    reloaded = GLiClassModel.from_pretrained(path).eval()
    with torch.no_grad():
        got = reloaded(**GLiClassProcessor.from_pretrained(path)(TEXTS, LABELS)).logits
    mask = batch["labels_mask"]
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    assert isinstance(adapted, PeftModel)  # the export merged a copy: training can go on with adapters
    assert isinstance(merge_lora(model), GLiClassModel)
