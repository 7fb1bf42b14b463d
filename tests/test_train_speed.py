"""Training throughput (issue 13 item 6): length-grouped batches, the cheaper gradient check and clipping, the fused
optimiser, and the side-by-side harness `python -m gliclass.evaluation.train_speed`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from gliclass.data.datamodule import GLiClassDataModule
from gliclass.data.dataset import GLiClassDataset
from gliclass.data.formats import Example, write_training_file
from gliclass.data.resumable import EpochSampler, ResumableLoader
from gliclass.evaluation import train_speed
from gliclass.evaluation.workers import official_python
from tests.conftest import tiny_model
from tests.test_train_module import make_module, trainer
from tests.test_train_run import compose_train


def padded_tokens(order: list[int], lengths: list[int], batch_size: int) -> int:
    return sum(
        max(lengths[i] for i in order[s : s + batch_size]) * batch_size for s in range(0, len(order), batch_size)
    )


# ------------------------------------------------------------------------------------------------ the sampler
def test_length_grouped_sampler_sorts_each_window_and_pads_far_less():
    rng = random.Random(0)
    lengths = [rng.choice([10, 20, 40, 80, 160, 250]) + rng.randrange(5) for _ in range(200)]
    plain = list(EpochSampler(200, seed=3))
    sampler = EpochSampler(200, seed=3, batch_size=8, lengths=lengths, length_window=5)
    order = list(sampler)
    assert sorted(order) == list(range(200))  # a permutation: every sample once per epoch
    # every batch comes from one window of 40 rows sorted longest first: its rows are adjacent in length order
    batches = [order[s : s + 8] for s in range(0, 200, 8)]
    for batch in batches:
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert padded_tokens(order, lengths, 8) < 0.75 * padded_tokens(plain, lengths, 8)
    assert list(EpochSampler(200, seed=3, batch_size=8, lengths=lengths, length_window=5)) == order  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != order  # windows are drawn afresh every epoch
    again = list(sampler)
    regrouped = {tuple(sorted(again[s : s + 8])) for s in range(0, 200, 8)}
    assert len({tuple(sorted(b)) for b in batches} & regrouped) < 25  # and so is batch composition


def test_length_grouping_keeps_dataset_groups_and_resumes_mid_epoch():
    groups = ["a"] * 37 + ["b"] * 50 + ["c"] * 13
    lengths = [(i * 37) % 101 for i in range(100)]
    make = lambda: EpochSampler(100, seed=1, groups=groups, batch_size=8, lengths=lengths, length_window=2)  # noqa: E731
    order = list(make())
    assert sorted(order) == list(range(100))
    full = (37 // 8 + 50 // 8 + 13 // 8) * 8
    for start in range(0, full, 8):
        assert len({groups[i] for i in order[start : start + 8]}) == 1
    resumed = make()
    resumed.skip = 24
    assert list(resumed) == order[24:]


def test_length_grouping_rejects_lengths_that_do_not_fit():
    with pytest.raises(ValueError, match="one length per sample"):
        EpochSampler(5, seed=0, batch_size=2, lengths=[1, 2, 3], length_window=2)
    with pytest.raises(ValueError, match="length_window >= 1"):
        EpochSampler(3, seed=0, batch_size=2, lengths=[1, 2, 3], length_window=0)
    with pytest.raises(ValueError, match="length_window must be >= 0"):
        GLiClassDataModule(length_window=-1)


# ------------------------------------------------------------------------------------------------ the data module
def rows(count: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    labels = [f"label {i}" for i in range(12)]
    out = []
    for i in range(count):
        text = " ".join(
            rng.choice(["good", "bad", "movie", "plot", "actor", "scene"]) for _ in range(rng.randrange(2, 60))
        )
        candidates = rng.sample(labels, rng.randrange(2, 12))
        out.append(Example(text, candidates, {candidates[0]: 1.0}, source=f"row {i}"))
    return out


def test_sequence_lengths_are_the_encoded_lengths_capped_at_the_budget():
    _, processor = tiny_model(max_length=48)
    examples = rows(40)
    dataset = GLiClassDataset(examples, processor)
    lengths = dataset.sequence_lengths(chunk=7)
    full = [len(processor.tokenizer(processor.segments(e.text, e.all_labels).string)["input_ids"]) for e in examples]
    assert lengths == [min(n, processor.budget) for n in full]
    assert any(n > processor.budget for n in full) and max(lengths) == processor.budget
    fitting = [i for i, n in enumerate(full) if n <= processor.budget]
    assert all(
        lengths[i] == len(processor.encode(examples[i].text, examples[i].all_labels)["input_ids"]) for i in fitting
    )


def loader_widths(length_window: int) -> tuple[ResumableLoader, list[int]]:
    _, processor = tiny_model(max_length=128)
    module = GLiClassDataModule(processor=processor, batch_size=8, length_window=length_window, seed=5)
    module.train_examples, module.val_examples, module._eval = rows(96), [], {}
    loader = module.train_dataloader()
    return loader, [batch["input_ids"].shape[1] for batch in loader]


def test_the_training_loader_pads_less_with_length_grouping_and_keeps_the_old_order_without():
    grouped, widths = loader_widths(8)
    plain, plain_widths = loader_widths(0)
    assert sum(widths) < 0.8 * sum(plain_widths)
    assert plain.sampler.lengths is None and grouped.sampler.lengths is not None
    assert list(plain.sampler) == list(EpochSampler(96, seed=5, tag_draws=True))  # length_window=0: as before


# ------------------------------------------------------------------------------------------------ the optimiser step
def test_clipping_in_the_module_equals_clip_grad_norm_and_catches_non_finite_gradients(single_thread):
    model, processor = tiny_model()
    module = make_module(model)
    module.trainer = trainer(gradient_clip_val=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = processor(["a good movie", "a bad plot"], [["good", "bad", "movie"], ["bad", "good"]])
    output = model(**batch)
    output.logits[output.labels_mask].sum().mul(100).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    holders = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for holder, p in zip(holders, params, strict=True):
        holder.grad = p.grad.clone()
    torch.nn.utils.clip_grad_norm_(holders, 1e-3)  # what Lightning's clipping does
    module.configure_gradient_clipping(optimizer, 1e-3, "norm")
    assert all(torch.equal(p.grad, h.grad) for p, h in zip(params, holders, strict=True))
    # below the threshold the gradients are left exactly as they are
    before = [p.grad.clone() for p in params]
    module.configure_gradient_clipping(optimizer, 1e9, "norm")
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))
    # a non-finite gradient skips the step: no gradients left, one skipped batch
    module.skipped.record(None, 0)
    params[0].grad.view(-1)[0] = float("nan")
    module.configure_gradient_clipping(optimizer, 1.0, "norm")
    assert all(p.grad is None for p in model.parameters()) and module.skipped.skipped == 1


def test_the_pretraining_optimiser_is_fused(tmp_path):
    cfg = compose_train(tmp_path, ["backbone=tiny_bert"])
    optimizer = instantiate(cfg.module.optimizer)(params=[torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True


# ------------------------------------------------------------------------------------------------ the harness
def test_ours_command_composes_and_trains_on_the_json_file(tmp_path):
    """The run.py overrides of the harness compose, and the data module reads the official-format file."""
    _, processor = tiny_model(max_length=64)
    data = tmp_path / "train.json"
    write_training_file(rows(32), data)
    assert isinstance(json.loads(data.read_text()), list)  # the official trainer's format: a JSON list
    args = train_speed.parse_args(["--steps", "3", "--batch-size", "8", "--rows", "16"])
    command = train_speed.ours_command(args, data, data, tmp_path / "model", tmp_path / "run", tmp_path / "rec.json")
    overrides = [o for o in command[2:] if not o.startswith(("hydra.", "model._target_", "+model.init_from"))]
    cfg = compose_train(tmp_path, [*overrides, "backbone=tiny_bert"])
    assert cfg.trainer.max_steps == 3 and cfg.data.batch_size == 8 and cfg.loss.classification == "focal"
    assert cfg.loss.classification_weight == 1.0 and cfg.loss.get("cross_entropy_coef", 0.0) == 0.0
    assert cfg.callbacks.get("model_checkpoint") is None and cfg.trainer.enable_checkpointing is False
    datamodule = instantiate(cfg.data, processor=processor)
    datamodule.setup("fit")
    assert len(datamodule.train_examples) == 32 and datamodule.val_examples == []


def test_summary_and_verdicts_weigh_losses_by_label_slots():
    record = {
        "step_end_s": [2.0, 3.0, 4.0],
        "step_end_cpu_s": [4.0, 6.0, 8.0],
        "losses": [0.3, 0.1, 0.2],
        "label_slots": [10, 30, 20],
        "batch_shapes": [[4, 10], [4, 20], [4, 30]],
        "tokens": [40, 40, 60],
        "heldout_loss_start": 0.5,
        "heldout_loss_end": 0.2,
    }
    summary = train_speed.summarise(record, batch_size=4)
    assert summary["examples_per_s"] == 3.0 and summary["steady_examples_per_s"] == 4.0
    assert summary["examples_per_cpu_s"] == 1.5
    assert summary["loss_first"] == pytest.approx((0.3 * 10 + 0.1 * 30 + 0.2 * 20) / 60)
    assert summary["padding_fraction"] == pytest.approx(1 - 140 / 240)
    slower = dict(record, step_end_s=[4.0, 6.0, 8.0], heldout_loss_end=0.21)
    runs = {"official": {"summary": train_speed.summarise(slower, 4)}, "ours": {"summary": summary}}
    verdict = train_speed.verdicts(runs, tolerance=0.1)
    assert verdict["ratio"] == 2.0 and verdict["speed_target"] == "HOLDS" and verdict["loss_target"] == "HOLDS"
    assert train_speed.verdicts(runs, tolerance=0.01)["loss_target"] == "MISSED"


@pytest.mark.slow
def test_the_harness_runs_end_to_end(tmp_path):
    systems = "official,ours" if official_python() else "ours"
    argv = ["--steps", "2", "--rows", "32", "--heldout", "16", "--max-length", "128", "--systems", systems]
    result = train_speed.main([*argv, "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    for name in ("train_speed.json", "train_speed.md", "train_speed.png"):
        assert (tmp_path / "out" / name).is_file()
    for run in result["runs"].values():
        assert len(run["record"]["losses"]) == 2 and run["summary"]["examples_per_s"] > 0
    if "official" in result["runs"]:  # the same model and objective: the same held-out loss before training
        starts = [run["summary"]["heldout_loss_start"] for run in result["runs"].values()]
        assert starts[0] == pytest.approx(starts[1], rel=1e-5)
        assert result["verdict"]["speed_target"] in ("HOLDS", "MISSED")
    assert Path(result["run"]["command"].split()[0]).name == "python"
