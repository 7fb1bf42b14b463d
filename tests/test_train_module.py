"""GLiClassModule: fault tolerance (skipped batches), metrics and evaluation decisions, on a tiny model."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gliclass.data import Example, GLiClassCollator, GLiClassDataset
from gliclass.evaluation.metrics import macro_f1
from gliclass.modeling.losses import GLiClassLoss
from gliclass.training.callbacks import DenseWeightAveraging
from gliclass.training.metrics import LabelF1, decide
from gliclass.training.module import GLiClassModule, TooManySkippedBatchesError
from gliclass.training.optim import parameter_groups

WORDS = ["good", "bad", "storm", "goal", "vote", "film", "rain", "team"]
LABELS = ["positive", "negative", "weather", "sports", "politics"]


def examples(n: int, seed: int = 0, nan_rows: Sequence[int] = ()) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        labels = rng.sample(LABELS, rng.randint(2, 4))
        score = math.nan if i in nan_rows else 1.0
        out.append(Example(" ".join(rng.choices(WORDS, k=5)), labels, {labels[0]: score}))
    return out


class ListDataModule(L.LightningDataModule):
    """In-memory examples behind the GLiClassDataModule contract (eval_names, eval_multi_label)."""

    def __init__(
        self,
        processor,
        train: list[Example],
        evals: dict[str, tuple[list[Example], bool]] | None = None,
        trim_labels_to_fit: bool = False,
    ):
        super().__init__()
        self.processor, self.train, self.evals = processor, train, evals or {}
        self.trim_labels_to_fit = trim_labels_to_fit
        self.eval_names = list(self.evals)
        self.eval_multi_label = {name: multi for name, (_, multi) in self.evals.items()}

    def loader(self, rows: list[Example], trim_labels_to_fit: bool = False) -> DataLoader:
        dataset = GLiClassDataset(rows, self.processor, trim_labels_to_fit=trim_labels_to_fit)
        return DataLoader(dataset, batch_size=2, collate_fn=GLiClassCollator(self.processor))

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train, self.trim_labels_to_fit)

    def test_dataloader(self) -> list[DataLoader]:
        return [self.loader(rows) for rows, _ in self.evals.values()]


def make_module(model, **kwargs) -> GLiClassModule:
    return GLiClassModule(
        model,
        GLiClassLoss(),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        param_groups=functools.partial(parameter_groups, encoder_lr=1e-3),
        **kwargs,
    )


def trainer(**kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**options, **kwargs})


def test_a_nan_batch_is_skipped_and_counted(make_tiny):
    model, processor = make_tiny("bert")
    before = [p.detach().clone() for p in model.parameters()]
    module = make_module(model)
    run = trainer()
    run.fit(module, datamodule=ListDataModule(processor, examples(8, nan_rows=[2])))  # batch 1 holds the NaN
    assert module.skipped.state_dict() == {"seen": 4, "skipped": 1}
    assert run.callback_metrics["train/skipped_batches"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_too_many_skipped_batches_stop_the_run_with_a_clear_error(make_tiny):
    model, processor = make_tiny("bert")
    module = make_module(model, max_skipped_fraction=0.3, min_batches=4)
    data = ListDataModule(processor, examples(16, nan_rows=[0, 2, 4]))  # batches 0, 1, 2 fail
    with pytest.raises(TooManySkippedBatchesError, match=r"2 of 2 training batches were skipped.*non-finite loss"):
        trainer().fit(module, datamodule=data)


def test_out_of_memory_is_skipped_but_a_bug_is_raised(make_tiny, monkeypatch):
    model, processor = make_tiny("bert")
    forward = model.forward
    calls = []

    def failing(error: Exception):
        def patched(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise error
            return forward(*args, **kwargs)

        return patched

    monkeypatch.setattr(model, "forward", failing(torch.OutOfMemoryError("CUDA out of memory")))
    module = make_module(model)
    trainer().fit(module, datamodule=ListDataModule(processor, examples(8)))
    assert module.skipped.skipped == 1

    calls.clear()
    monkeypatch.setattr(model, "forward", failing(RuntimeError("a genuine bug")))
    with pytest.raises(RuntimeError, match="a genuine bug"):
        trainer().fit(make_module(model), datamodule=ListDataModule(processor, examples(8)))


def test_skip_counters_and_best_score_are_checkpointed(make_tiny):
    model, _ = make_tiny("bert")
    module = make_module(model)
    module.skipped.load_state_dict({"seen": 10, "skipped": 2})
    module.val_f1_best.update(torch.tensor(0.7))
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    restored = make_module(make_tiny("bert")[0])
    restored.load_state_dict(checkpoint["state_dict"])
    restored.on_load_checkpoint(checkpoint)
    assert restored.skipped.state_dict() == {"seen": 10, "skipped": 2}
    assert restored.val_f1_best.compute().item() == pytest.approx(0.7)


def test_rows_with_trimmed_labels_are_counted_logged_and_checkpointed(make_tiny):
    model, processor = make_tiny("bert")
    long_labels = [f"very good food number {i}" for i in range(30)]  # far over the 128-token budget
    crowded = [Example("the movie was good but the food was bad", long_labels, {long_labels[k]: 1.0}) for k in (2, 7)]
    rows = [crowded[0], *examples(2), crowded[1], *examples(2, seed=1)]  # batches: 1, 1, 0 trimmed rows
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            seen.append(trainer.callback_metrics["train/rows_labels_trimmed"].item())

    module = make_module(model)
    trainer(callbacks=[Record()]).fit(module, datamodule=ListDataModule(processor, rows, trim_labels_to_fit=True))
    assert seen == [1, 2, 2] and module.rows_labels_trimmed == 2

    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    restored = make_module(make_tiny("bert")[0])
    restored.on_load_checkpoint(checkpoint)
    assert restored.rows_labels_trimmed == 2
    del checkpoint["rows_labels_trimmed"]  # a checkpoint saved before the count existed
    restored.on_load_checkpoint(checkpoint)
    assert restored.rows_labels_trimmed == 0


def test_test_stage_decides_per_dataset_and_logs_under_a_prefix(make_tiny):
    model, processor = make_tiny("bert")
    single = [Example(f"{w} day", ["positive", "negative"], {"positive": 1.0}) for w in WORDS]
    multi = [Example(f"{w} night", ["weather", "sports", "politics"], {"weather": 1.0, "sports": 1.0}) for w in WORDS]
    data = ListDataModule(processor, examples(4), {"reviews": (single, False), "topics": (multi, True)})
    module = make_module(model)
    run = trainer()
    with module.logging_as("zeroshot_untrained"):
        run.test(module, datamodule=data, verbose=False)
    untrained = dict(run.callback_metrics)
    run.test(module, datamodule=data, verbose=False)
    for prefix in ("zeroshot_untrained", "test"):
        assert {f"{prefix}/reviews/f1_macro", f"{prefix}/topics/recall_micro", f"{prefix}/f1_macro"} <= set(
            untrained if prefix != "test" else run.callback_metrics
        )
    mean = (run.callback_metrics["test/reviews/f1_macro"] + run.callback_metrics["test/topics/f1_macro"]) / 2
    assert run.callback_metrics["test/f1_macro"].item() == pytest.approx(mean.item())
    # single-label: exactly one decision per text, so micro F1 is the accuracy
    scores = processor([e.text for e in single], [e.all_labels for e in single])
    predicted = model(**scores).logits.argmax(-1)
    assert run.callback_metrics["test/reviews/f1_micro"].item() == pytest.approx((predicted == 0).float().mean().item())


def test_decisions():
    logits = torch.tensor([[0.2, 3.0, 9.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert decide(logits, mask, multi_label=False).tolist() == [[False, True, False], [False, False, True]]
    assert decide(logits, mask, multi_label=True).tolist() == [[True, True, False], [False, False, True]]
    assert decide(logits, mask, multi_label=True, threshold=0.9).tolist() == [[False, True, False], [False] * 3]


def test_label_metrics_follow_names_not_slots_and_match_the_evaluation_macro_f1():
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d"]
    truth = rng.random((30, 4)) > 0.6
    pred = rng.random((30, 4)) > 0.5
    truth[:, 3] = pred[:, 3] = False  # a label never true nor predicted does not count in the macro average
    metric = LabelF1()
    for start in range(0, 30, 10):  # three batches, each with the labels in a different order
        order = rng.permutation(4)
        rows = slice(start, start + 10)
        metric.update(
            torch.tensor(pred[rows][:, order]),
            torch.tensor(truth[rows][:, order], dtype=torch.float),
            torch.ones(10, 4, dtype=torch.bool),
            [[names[j] for j in order]] * 10,
        )
    scores = metric.compute()
    assert scores["f1_macro"].item() == pytest.approx(macro_f1(truth, pred), rel=1e-6)
    tp, fp, fn = (truth & pred).sum(), (~truth & pred).sum(), (truth & ~pred).sum()
    assert scores["f1_micro"].item() == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-6)
    assert scores["precision_micro"].item() == pytest.approx(tp / (tp + fp), rel=1e-6)
    assert scores["recall_micro"].item() == pytest.approx(tp / (tp + fn), rel=1e-6)
    assert set(LabelF1(macro=False).compute()) == {"f1_micro", "precision_micro", "recall_micro"}


class RecordWeights(L.Callback):
    def __init__(self):
        self.after_step = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append([p.detach().clone() for p in pl_module.parameters()])


def test_dense_weight_averaging_ends_with_the_mean_of_the_late_weights(make_tiny, tmp_path):
    model, processor = make_tiny("bert")
    module, record = make_module(model), RecordWeights()
    averaging = DenseWeightAveraging(start_fraction=0.5, every_n_steps=1)
    run = trainer(callbacks=[record, averaging])
    run.fit(module, datamodule=ListDataModule(processor, examples(8)))  # 4 steps: samples after steps 3 and 4
    assert averaging.samples() == 2
    for i, param in enumerate(module.parameters()):
        torch.testing.assert_close(param, (record.after_step[2][i] + record.after_step[3][i]) / 2)
    assert any(not torch.equal(p, last) for p, last in zip(module.parameters(), record.after_step[3], strict=True))
    checkpoint = {"state_dict": module.state_dict()}  # saved after training: the average, and the raw weights
    averaging.on_save_checkpoint(run, module, checkpoint)
    params = dict(module.named_parameters())
    for name, value in checkpoint["current_model_state"].items():
        if name in params:
            torch.testing.assert_close(value, record.after_step[3][list(params).index(name)])
            torch.testing.assert_close(checkpoint["state_dict"][name], params[name])
    with pytest.raises(ValueError, match="start_fraction"):
        DenseWeightAveraging(start_fraction=1.0)


def test_dense_weight_averaging_without_samples_keeps_the_trained_weights(make_tiny):
    class Never(DenseWeightAveraging):
        def should_update(self, step_idx=None, epoch_idx=None):
            return False

    model, processor = make_tiny("bert")
    module, record, averaging = make_module(model), RecordWeights(), Never()
    run = trainer(callbacks=[record, averaging])
    run.fit(module, datamodule=ListDataModule(processor, examples(8)))
    assert averaging.samples() == 0
    for param, last in zip(module.parameters(), record.after_step[-1], strict=True):
        torch.testing.assert_close(param, last)  # not the copy taken when training started
    checkpoint = {"state_dict": module.state_dict()}
    averaging.on_save_checkpoint(run, module, checkpoint)
    assert "current_model_state" not in checkpoint
