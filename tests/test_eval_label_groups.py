"""Evaluation and validation rows whose labels do not fit the length budget are scored in label groups, as the
pipeline scores them: never an error, never a dropped label, one row of logits per text (issue 23, item 2)."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer

from gliclass.data.datamodule import GLiClassDataModule
from gliclass.data.dataset import GLiClassCollator, GLiClassDataset
from gliclass.data.formats import Example
from gliclass.modeling.losses import GLiClassLoss
from gliclass.pipeline import ZeroShotPipeline
from gliclass.processing import GLiClassProcessor, LabelBudgetError
from gliclass.training.metrics import decide
from gliclass.training.module import GLiClassModule
from tests.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

LABELS = [
    "sports",
    "politics",
    "business",
    "science",
    "technology",
    "world news",
    "money",
    "bank card",
    "weather",
    "travel",
    "music",
    "health",
]
TEXTS = [
    "the team made a great play in the last game of the day",
    "the bank card payment was made on the first day",
    "bad weather for the flight and the hotel",
]
TRAIN_TEXTS = [
    "we love the new movie",
    "music and sports on the news",
    "my bank account balance",
    "the doctor said the fever is bad",
]
# per architecture: a budget at which the 12 labels leave the text too little room (uni, fused: beside the text;
# encoder-decoder: in the decoder's label prompt)
BUDGETS = {"uni-encoder": 32, "bi-encoder-fused": 20, "encoder-decoder": 24}


def with_budget(processor: GLiClassProcessor, max_length: int) -> GLiClassProcessor:
    return GLiClassProcessor(
        processor.tokenizer, processor.config, max_length=max_length, label_tokenizer=processor.label_tokenizer
    )


def examples(texts=TEXTS, labels=LABELS) -> list[Example]:
    return [
        Example(text, list(labels), {labels[i % len(labels)]: 1.0}, source=f"rows:{i}") for i, text in enumerate(texts)
    ]


def module_for(model) -> GLiClassModule:
    return GLiClassModule(model, GLiClassLoss(), optimizer=partial(torch.optim.AdamW, lr=1e-3))


def grouped_batch(processor, rows):
    dataset = GLiClassDataset(rows, processor, group_labels_to_fit=True)
    return GLiClassCollator(processor)([dataset[i] for i in range(len(rows))])


@pytest.mark.parametrize("arch", list(BUDGETS))
def test_rows_over_the_budget_get_the_pipelines_grouped_logits(arch):
    model, processor = tiny_model(architecture_type=arch)
    small = with_budget(processor, BUDGETS[arch])
    rows = examples()
    with pytest.raises(LabelBudgetError, match="rows:0"):  # the processor alone refuses these rows
        GLiClassDataset(rows, small)[0]
    batch = grouped_batch(small, rows)
    assert len(batch["input_ids"]) > len(rows)  # several model rows per text
    module = module_for(model)
    with torch.no_grad():
        terms, output = module.model_step(batch)
    assert output.logits.shape == (len(rows), len(LABELS))
    assert output.labels_mask.all()  # every label of every text scored
    pipeline = ZeroShotPipeline(model, small, long_text="truncate")
    assert all(len(plan) > 1 for plan in pipeline.plan(TEXTS, LABELS))  # the pipeline groups them too
    expected = torch.tensor([[out["logits"][label] for label in LABELS] for out in pipeline.logits(TEXTS, LABELS)])
    torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=1e-5)
    # the loss and the single-label decision read all of a text's labels at once (softmax after reassembly)
    expected_terms = GLiClassLoss()(
        type(output)(expected, torch.ones_like(expected, dtype=torch.bool)), batch["targets"]
    )
    torch.testing.assert_close(terms["loss"], expected_terms["loss"], atol=1e-5, rtol=1e-5)
    chosen = decide(output.logits, output.labels_mask, multi_label=False).float().argmax(-1)
    assert chosen.tolist() == expected.argmax(-1).tolist()


def test_a_row_that_fits_is_scored_as_before_beside_grouped_rows():
    """Only rows over the budget are grouped: a row whose labels fit in one group keeps the logits of its plain
    encoding (and those of a larger-budget model: for a uni-encoder equality holds where a single group fits)."""
    model, processor = tiny_model()
    small, large = with_budget(processor, 32), with_budget(processor, 128)
    few = LABELS[:4]
    rows = [*examples(TEXTS[:2]), *examples(TEXTS[2:], few)]
    batch = grouped_batch(small, rows)
    with torch.no_grad():
        _, output = module_for(model).model_step(batch)
        alone = model(**large([TEXTS[2]], [few])).logits
    torch.testing.assert_close(output.logits[2, : len(few)], alone[0], atol=1e-5, rtol=1e-5)
    assert output.labels_mask[2].tolist() == [True] * len(few) + [False] * (len(LABELS) - len(few))


def write_benchmark(root, name, rows, labels):
    (root / name).mkdir(parents=True)
    (root / name / "labels.json").write_text(json.dumps(labels))
    with open(root / name / "test.jsonl", "w") as f:
        for text, gold in rows:
            f.write(json.dumps({"text": text, "labels": [gold]}) + "\n")


def test_validation_and_test_loops_score_every_label(tmp_path):
    """Lightning's validate and test loops (the datamodule's loaders, the module's steps) on rows over the budget:
    no error, and the test F1 is that of the pipeline's grouped logits."""
    model, processor = tiny_model()
    small = with_budget(processor, 32)
    data = tmp_path / "data"
    gold = ["sports", "bank card", "weather"]
    write_benchmark(data, "many", list(zip(TEXTS, gold, strict=True)), LABELS)
    train = tmp_path / "train.jsonl"
    with open(train, "w") as f:
        for i, text in enumerate(TRAIN_TEXTS):
            f.write(json.dumps({"text": text, "all_labels": LABELS, "true_labels": [LABELS[i]]}) + "\n")
    datamodule = GLiClassDataModule(
        small,
        train_files=[str(train)],
        eval_datasets=["many:test"],
        data_dir=str(data),
        val_fraction=0.5,
        batch_size=2,
        eval_batch_size=2,
        shuffle_labels=False,
    )
    module = module_for(model)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    validated = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    assert math.isfinite(validated["val/loss"]) and "val/f1_macro" in validated
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    assert math.isfinite(tested["test/many/loss"])
    logits = ZeroShotPipeline(model, small, long_text="truncate").logits(TEXTS, LABELS)
    predicted = [max(LABELS, key=lambda label, out=out: out["logits"][label]) for out in logits]
    classes = set(gold) | set(predicted)
    f1 = []
    for label in classes:
        tp = sum(p == label == g for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == label != g for p, g in zip(predicted, gold, strict=True))
        fn = sum(g == label != p for p, g in zip(predicted, gold, strict=True))
        f1.append(2 * tp / (2 * tp + fp + fn))
    assert tested["test/many/f1_macro"] == pytest.approx(sum(f1) / len(f1), abs=1e-6)
