"""Distillation from a frozen teacher: the KL term by hand, label order, and a run.py run of a uni-encoder student."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_BACKBONES, tiny_tokenizer
from test_train_run import compose_train

import run
from gliclass import build_model
from gliclass.training.distill import Teacher, distillation_kl

pytestmark = pytest.mark.usefixtures("single_thread")


def test_kl_by_hand_and_padded_slots_ignored():
    teacher = torch.tensor([[0.0, 0.0, 99.0], [1.0, 2.0, 3.0]])
    student = torch.tensor([[math.log(3.0), 0.0, -7.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # row 0: p_t = (1/2, 1/2), p_s = (3/4, 1/4); row 1: identical distributions, KL 0
    row0 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert distillation_kl(student, teacher, mask).item() == pytest.approx(row0 / 2, abs=1e-6)
    # temperature 2: logits halved, the KL scaled by T^2
    p_s = (math.sqrt(3.0) / (math.sqrt(3.0) + 1), 1 / (math.sqrt(3.0) + 1))  # softmax(log(3) / 2, 0)
    by_hand = 4 * sum(0.5 * math.log(0.5 / p) for p in p_s)
    got = distillation_kl(student[:1, :2], teacher[:1, :2], mask[:1, :2], 2.0).item()
    assert got == pytest.approx(by_hand, abs=1e-6)
    # a row without candidates is left out, not averaged in as 0
    empty = torch.tensor([[True, True, False], [False, False, False]])
    assert distillation_kl(student, teacher, empty).item() == pytest.approx(row0, abs=1e-6)


def test_kl_gradient_reaches_the_student_only_on_real_slots():
    student = torch.zeros(1, 3, requires_grad=True)
    distillation_kl(student, torch.tensor([[2.0, 0.0, 5.0]]), torch.tensor([[True, True, False]])).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1] and student.grad[0, 2] == 0


def test_kl_refuses_mismatched_shapes_and_bad_temperature():
    with pytest.raises(ValueError, match="one shape"):
        distillation_kl(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), 0.0)


@pytest.fixture
def teacher_dir(tmp_path: Path) -> Path:
    """A tiny random bi-encoder on the MiniLM-sized tokenizer of tests, saved like an export."""
    torch.manual_seed(0)
    model, processor = build_model(
        TINY_BACKBONES["bert"], tokenizer=tiny_tokenizer(), initializer_range=0.3, architecture_type="bi-encoder"
    )
    out = tmp_path / "teacher"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_teacher_scores_each_row_in_its_label_order(teacher_dir: Path):
    teacher = Teacher(teacher_dir)
    texts = ["the film was good", "a sad day"]
    labels = [["positive", "negative", "neutral"], ["sad", "happy"]]
    logits = teacher.logits(texts, labels, torch.device("cpu"))
    assert logits.shape == (2, 3)
    swapped = teacher.logits(texts, [["neutral", "positive", "negative"], ["happy", "sad"]], torch.device("cpu"))
    torch.testing.assert_close(swapped[0], logits[0, [2, 0, 1]])
    torch.testing.assert_close(swapped[1, :2], logits[1, [1, 0]])
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_teacher_errors_name_the_problem(tmp_path: Path, teacher_dir: Path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        Teacher(tmp_path / "missing")
    with pytest.raises(ValueError, match="weight"):
        Teacher(teacher_dir, weight=-1.0)
    with pytest.raises(KeyError, match="texts"):
        Teacher(teacher_dir).loss(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), {})


def test_run_distils_a_uni_encoder_and_keeps_the_teacher_out_of_checkpoints(tmp_path: Path, teacher_dir: Path):
    """`distill=teacher` adds the KL term to the uni-encoder's loss (logged as train/loss_distill); the teacher is
    unchanged by training and absent from the checkpoint."""
    cfg = compose_train(
        tmp_path / "run",
        [
            "data=tiny",
            "backbone=tiny_bert",
            "arch=uni",
            "distill=teacher",
            f"distill.path={teacher_dir}",
            "distill.weight=2.0",
            "trainer.max_steps=2",
            "weight_ensemble_alpha=1.0",
            "test=false",
            "export=false",
        ],
    )
    before = {k: v.clone() for k, v in Teacher(teacher_dir).model.state_dict().items()}
    metrics = run.train(cfg)
    assert metrics["train/loss_distill"] > 0
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    # what a run without a teacher saves: the student and the best-validation tracker
    assert {key.split(".")[0] for key in last["state_dict"]} == {"model", "val_f1_best"}
    assert "distill" not in last["hyper_parameters"]
    after = Teacher(teacher_dir).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ppo_refuses_a_teacher(teacher_dir: Path):
    from gliclass.training.ppo import PPOModule

    model, _ = build_model(TINY_BACKBONES["bert"], tokenizer=tiny_tokenizer())
    with pytest.raises(ValueError, match="does not distil"):
        PPOModule(model=model, loss=None, optimizer=torch.optim.AdamW, distill=Teacher(teacher_dir))
