"""Reward components for PPO: metric values, partial annotation, composition from config, feedback files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gliclass.training.rewards import REWARD_COMPONENTS, CompositeReward, known_mask

NAN = math.nan


def call(components, actions, targets, labels_mask=None, batch=None):
    actions = torch.tensor(actions, dtype=torch.float32)
    targets = torch.tensor(targets, dtype=torch.float32)
    labels_mask = torch.ones_like(actions, dtype=torch.bool) if labels_mask is None else torch.tensor(labels_mask)
    return CompositeReward(components)(actions, torch.full_like(actions, 0.5), targets, labels_mask, batch or {})


def test_metric_rewards_per_sample():
    actions = [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    targets = [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    comps = {"f1": {}, "precision": {}, "recall": {}, "accuracy": {}}
    values = call(comps, actions, targets).components
    torch.testing.assert_close(values["f1"], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(values["precision"], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(values["recall"], torch.tensor([0.5, 1.0, 0.0]))
    torch.testing.assert_close(values["accuracy"], torch.tensor([0.5, 1.0, 0.5]))


def test_padded_slots_are_ignored():
    # slot 2 of the first row is padding: predicting it must not count as a false positive
    result = call({"f1": {}}, [[1, 0, 1]], [[1, 0, 0]], labels_mask=[[True, True, False]])
    assert result.components["f1"].item() == 1.0
    assert result.covered.tolist() == [[True, True, False]]
    assert result.total[0, 2] == 0


@pytest.mark.parametrize("unknown", [NAN, -1.0])
def test_unknown_truth_is_masked(unknown):
    # the second label's truth is unknown: predicting it is neither rewarded nor punished, and it gets no gradient
    with_pred = call({"f1": {}}, [[1, 1, 0]], [[1, unknown, 0]])
    without = call({"f1": {}}, [[1, 0, 0]], [[1, unknown, 0]])
    assert with_pred.components["f1"].item() == without.components["f1"].item() == 1.0
    assert with_pred.covered.tolist() == [[True, False, True]]


def test_known_mask_from_batch():
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    labels_mask = torch.ones(1, 3, dtype=torch.bool)
    mask = known_mask(targets, labels_mask, {"known_mask": torch.tensor([[1, 1, 0]])})
    assert mask.tolist() == [[True, True, False]]
    result = call({"f1": {}}, [[1, 0, 1]], [[1, 0, 0]], batch={"known_mask": torch.tensor([[1, 1, 0]])})
    assert result.components["f1"].item() == 1.0


def test_soft_targets():
    result = call({"recall": {}}, [[1, 0]], [[0.5, 0.5]])
    assert result.components["recall"].item() == pytest.approx(0.5)


def test_label_count_penalty_covers_every_real_slot():
    result = call({"label_count": {"free": 1}}, [[1, 1, 1, 0]], [[NAN, NAN, NAN, NAN]])
    assert result.components["label_count"].item() == -2.0
    assert result.covered.all()


def test_extra_component_changes_the_reward():
    actions, targets = [[1, 1, 1, 0]], [[1, 0, 0, 0]]
    base = call({"f1": {"weight": 1.0}}, actions, targets)
    extra = call({"f1": {"weight": 1.0}, "label_count": {"weight": 0.1}}, actions, targets)
    assert extra.total[0, 0].item() == pytest.approx(base.total[0, 0].item() - 0.3)
    assert set(extra.components) == {"f1", "label_count"}


def test_weights_and_named_instances():
    result = call(
        {"a": {"type": "recall", "weight": 2.0}, "b": {"type": "precision", "weight": 0.5}}, [[1, 1]], [[1, 0]]
    )
    assert result.total[0, 0].item() == pytest.approx(2.0 * 1.0 + 0.5 * 0.5)


def test_unknown_component_is_an_error():
    with pytest.raises(ValueError, match="unknown reward component 'f2'"):
        CompositeReward({"f2": {}})
    assert {"f1", "precision", "recall", "accuracy", "label_count", "feedback"} <= set(REWARD_COMPONENTS)


def test_feedback_file(tmp_path):
    path = tmp_path / "feedback.jsonl"
    rows = [
        {"id": 7, "rewards": {"sports": 1.0, "music": -0.5}},
        {"text": "rated text", "reward": 2.0, "labels": ["music"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    batch = {"ids": [7, 8], "label_names": [["sports", "music", "news"], ["music", "sports"]]}
    actions = [[1, 1, 0], [1, 0, 0]]
    result = call({"feedback": {"path": str(path)}}, actions, [[NAN] * 3] * 2, [[1, 1, 1], [1, 1, 0]], batch)
    # per label: predicting a +1 label earns 1, predicting a -0.5 label costs 0.5; "news" has no feedback
    assert result.total[0].tolist() == [1.0, -0.5, 0.0]
    assert result.covered.tolist() == [[True, True, False], [False, False, False]]
    batch = {"texts": ["x", "rated text"], "label_names": batch["label_names"]}
    result = call({"feedback": {"path": str(path)}}, actions, [[NAN] * 3] * 2, [[1, 1, 1], [1, 1, 0]], batch)
    # the rated set {music} matches the actions of row 1 exactly: 2.0 * F1 = 2.0
    assert result.total[1].tolist() == [2.0, 2.0, 0.0]
    assert not result.covered[0].any()


def test_feedback_rows_are_validated(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": 1, "reward": 1.0}) + "\n")
    with pytest.raises(ValueError, match="needs the 'labels'"):
        CompositeReward({"feedback": {"path": str(path)}})
