"""Evaluation package: metrics on hand-computed cases, the dataset views, samplers, tables, and tiny end-to-end runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gliclass import GLiClassModel, GLiClassProcessor
from gliclass.evaluation import few_shot, zero_shot
from gliclass.evaluation.data import (
    classification_datasets,
    eval_split_name,
    few_shot_indices,
    load_eval_set,
    stratified_indices,
)
from gliclass.evaluation.metrics import decide, evaluate_scores, expected_calibration_error, indicator, macro_f1
from gliclass.evaluation.report import accuracy_table, fmt, markdown_table
from gliclass.processing import pad_ids


def write_dataset(root: Path, name: str, labels: list[str], splits: dict[str, list[tuple[str, list[str]]]]) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "labels.json").write_text(json.dumps(labels))
    for split, rows in splits.items():
        lines = [json.dumps({"text": text, "labels": row_labels}) for text, row_labels in rows]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    sentiment = [("i love it", ["positive"]), ("i hate it", ["negative"]), ("so good", ["positive"])] * 4
    write_dataset(root, "senti", ["negative", "positive"], {"train": sentiment, "test": sentiment[:6]})
    emotions = [("yay", ["joy", "surprise"]), ("meh", ["fear"]), ("oh no", ["fear"])] * 3
    write_dataset(root, "emo", ["joy", "fear", "surprise"], {"train": emotions})
    (root / "snli").mkdir()
    (root / "snli" / "labels.json").write_text(json.dumps(["entailment", "neutral", "contradiction"]))
    pair = {"premise": "a man sleeps", "hypothesis": "a person rests", "label": "entailment"}
    (root / "snli" / "validation.jsonl").write_text((json.dumps(pair) + "\n") * 4)
    return root


# ----------------------------------------------------------------- metrics
def test_macro_f1_single_label_by_hand():
    truth = indicator([["a"], ["a"], ["b"], ["c"]], ["a", "b", "c"])
    pred = indicator([["a"], ["b"], ["b"], ["a"]], ["a", "b", "c"])
    # a: tp1 fp1 fn1 -> 0.5; b: tp1 fp1 fn0 -> 2/3; c: tp0 fn1 -> 0
    assert macro_f1(truth, pred) == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)


def test_macro_f1_skips_labels_never_true_nor_predicted():
    truth = indicator([["a"], ["b"]], ["a", "b", "c"])
    assert macro_f1(truth, truth) == 1.0


def test_macro_f1_multi_label_by_hand():
    truth = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    pred = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    # col0: 1.0; col1: tp1 fn1 -> 2/3; col2: fp1 -> 0
    assert macro_f1(truth, pred) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_decide_single_vs_multi():
    scores = np.array([[0.2, 0.7, 0.6], [0.1, 0.1, 0.4]])
    assert decide(scores, multi_label=False).tolist() == [[False, True, False], [False, False, True]]
    assert decide(scores, multi_label=True).tolist() == [[False, True, True], [False, False, False]]


def test_ece_single_label_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    truth = indicator([["a"], ["b"], ["b"], ["a"]], ["a", "b"])
    # confidences .9 (right), .8 (wrong), .7 (right), .55 (wrong); 15 bins put each in its own bin
    expected = (abs(0.9 - 1) + abs(0.8 - 0) + abs(0.7 - 1) + abs(0.55 - 0)) / 4
    assert expected_calibration_error(scores, truth, multi_label=False) == pytest.approx(expected)


def test_ece_same_bin_averages_before_the_gap():
    scores = np.array([[0.81, 0.19], [0.85, 0.15]])  # both in (0.8, 0.8667]
    truth = indicator([["a"], ["b"]], ["a", "b"])
    assert expected_calibration_error(scores, truth, multi_label=False) == pytest.approx(abs(0.83 - 0.5))


def test_ece_multi_label_marginal_by_hand():
    scores = np.array([[0.9, 0.2], [0.1, 0.6]])
    truth = np.array([[1, 0], [0, 0]], dtype=bool)
    expected = (abs(0.9 - 1) + abs(0.2 - 0) + abs(0.1 - 0) + abs(0.6 - 0)) / 4
    assert expected_calibration_error(scores, truth, multi_label=True) == pytest.approx(expected)


def test_evaluate_scores_perfect_and_calibrated():
    metrics = evaluate_scores(np.array([[1.0, 0.0], [0.0, 1.0]]), [["x"], ["y"]], ["x", "y"], multi_label=False)
    assert (metrics.macro_f1, metrics.ece, metrics.accuracy, metrics.n) == (1.0, 0.0, 1.0, 2)


# ----------------------------------------------------------------- data
def test_reader_lists_text_datasets_and_picks_splits(data_dir: Path):
    found = classification_datasets(data_dir)
    assert sorted(found) == ["emo", "senti"]  # snli holds pairs, not texts
    assert eval_split_name(found["senti"]) == "test"
    assert eval_split_name(found["emo"]) == "train"
    emo = load_eval_set("emo", data_dir)
    assert emo.split == "train" and emo.multi_label and emo.label_names == ["joy", "fear", "surprise"]
    senti = load_eval_set("senti", data_dir)
    assert not senti.multi_label and len(senti) == 6


def test_stratified_sample_is_seeded_and_keeps_shares():
    labels = [["a"]] * 60 + [["b"]] * 30 + [["c"]] * 10
    first = stratified_indices(labels, 20, seed=3)
    assert first == stratified_indices(labels, 20, seed=3)
    assert first != stratified_indices(labels, 20, seed=4)
    picked = [labels[i][0] for i in first]
    assert (picked.count("a"), picked.count("b"), picked.count("c")) == (12, 6, 2)
    assert stratified_indices(labels, None) == list(range(100))


def test_few_shot_sampler_is_deterministic_and_balanced():
    labels = [["a"]] * 20 + [["b"]] * 20 + [["a", "b"]] * 5
    first = few_shot_indices(labels, ["a", "b"], per_label=4, seed=0)
    assert first == few_shot_indices(labels, ["a", "b"], per_label=4, seed=0)
    assert len(first) == len(set(first)) == 8
    assert first != few_shot_indices(labels, ["a", "b"], per_label=4, seed=1)


# ----------------------------------------------------------------- tables
def test_markdown_table_format():
    table = markdown_table(["name", "f1"], [["cr", 0.5], ["sst2", None]])
    assert table.splitlines() == ["| name | f1 |", "| --- | ---: |", "| cr | 0.5000 |", "| sst2 | — |"]
    assert fmt(True) == "yes" and fmt(float("nan")) == "—"


def test_accuracy_table_has_table3_layout_and_averages():
    datasets = [
        {
            "name": "cr",
            "split": "test",
            "n": 2,
            "multi_label": False,
            "results": {"ours": {"macro_f1": 0.5, "ece": 0.1}},
        },
        {
            "name": "go",
            "split": "train",
            "n": 3,
            "multi_label": True,
            "results": {"ours": {"macro_f1": 0.3, "ece": 0.3}},
        },
    ]
    lines = accuracy_table(datasets, ["ours"]).splitlines()
    assert lines[0] == "| Dataset | split | n | ours | ECE ours |"
    assert lines[3] == "| go (multi-label) | train | 3 | 0.3000 | 0.3000 |"
    assert lines[4] == "| AVERAGE |  | 5 | 0.4000 | 0.2000 |"
    assert lines[5] == "| AVERAGE (test splits) |  | 2 | 0.5000 | 0.1000 |"


# ----------------------------------------------------------------- end to end on a tiny model
@pytest.fixture
def tiny_dir(tmp_path: Path, make_tiny) -> Path:
    model, processor = make_tiny()
    out = tmp_path / "tiny"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def direct_metrics(model_dir: Path, eval_set, model=None) -> dict:
    """Our model on one text at a time (no pipeline, no padding), with macro-F1 and accuracy counted by hand."""
    model = model or GLiClassModel.from_pretrained(model_dir).eval()
    processor = GLiClassProcessor.from_pretrained(model_dir)
    names, multi = eval_set.label_names, eval_set.multi_label
    rows = []
    with torch.inference_mode():
        for text in eval_set.texts:
            logits = model(**processor([text], [names])).logits[0, : len(names)]
            rows.append((torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).tolist())
    scores = np.array(rows)
    if multi:
        picked = [{n for n, s in zip(names, row, strict=True) if s >= 0.5} for row in scores]
    else:
        picked = [{names[int(np.argmax(row))]} for row in scores]
    truth = [set(row) for row in eval_set.labels]
    f1 = []
    for name in names:  # sklearn's label set: labels true or predicted at least once
        tp = sum(name in p and name in t for p, t in zip(picked, truth, strict=True))
        fp = sum(name in p and name not in t for p, t in zip(picked, truth, strict=True))
        fn = sum(name not in p and name in t for p, t in zip(picked, truth, strict=True))
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return {
        "macro_f1": sum(f1) / len(f1) if f1 else 0.0,
        "ece": expected_calibration_error(scores, indicator(eval_set.labels, names), multi),  # checked by hand above
        "accuracy": sum(p == t for p, t in zip(picked, truth, strict=True)) / len(truth),
        "n": len(truth),
        "scores": scores,
    }


def assert_metrics(reported: dict, direct: dict) -> None:
    assert reported["n"] == direct["n"]
    for key in ("macro_f1", "accuracy", "ece"):
        assert reported[key] == pytest.approx(direct[key], abs=1e-5), key


def test_zero_shot_end_to_end(tiny_dir: Path, data_dir: Path, tmp_path: Path):
    """Every reported number equals our model's own scores on the same seeded rows; the run is deterministic and
    its JSON and Markdown hold those numbers."""
    argv = ["--model", str(tiny_dir), "--data-dir", str(data_dir), "--systems", "ours,cross-encoder"]
    argv += ["--limit", "4", "--cross-snli-pairs", "4", "--threads", "1"]
    result = zero_shot.main([*argv, "--out", str(tmp_path / "out")])
    assert [d["name"] for d in result["datasets"]] == ["emo", "senti"]
    assert "SNLI, 4 pairs" in result["systems"]["cross-encoder"]
    for entry in result["datasets"]:
        eval_set = load_eval_set(entry["name"], data_dir, limit=4, seed=0)
        assert (entry["split"], entry["n"], entry["multi_label"]) == (eval_set.split, 4, eval_set.multi_label)
        assert set(entry["results"]) == {"ours", "cross-encoder"}
        assert_metrics(entry["results"]["ours"], direct_metrics(tiny_dir, eval_set))
        assert entry["results"]["cross-encoder"]["n"] == 4
    # seeded end to end (the stratified rows, the cross-encoder's SNLI fine-tune): a second run reports the same
    again = zero_shot.main([*argv, "--out", str(tmp_path / "again")])
    assert again["datasets"] == result["datasets"]
    assert json.loads((tmp_path / "out" / "zero_shot.json").read_text())["datasets"] == result["datasets"]
    markdown = (tmp_path / "out" / "zero_shot.md").read_text().splitlines()
    emo, senti = result["datasets"]
    cells = [senti["results"][s][k] for k in ("macro_f1", "ece") for s in ("ours", "cross-encoder")]
    assert "| senti | test | 4 | " + " | ".join(f"{v:.4f}" for v in cells) + " |" in markdown
    # emo has no test split (scored on train): the test-split average is senti's row alone
    assert any(line.startswith("| emo (multi-label) | train | 4 |") for line in markdown)
    assert "| AVERAGE (test splits) |  | 4 | " + " | ".join(f"{v:.4f}" for v in cells) + " |" in markdown


def test_few_shot_end_to_end(tiny_dir: Path, data_dir: Path, tmp_path: Path):
    """The zero-shot and few-shot numbers equal our model's own scores before and after the same seeded fine-tune
    on 2 shots per label; the fine-tune moved the scores."""
    argv = ["--model", str(tiny_dir), "--data-dir", str(data_dir), "--datasets", "senti", "--shots", "2"]
    argv += ["--epochs", "1", "--threads", "1"]
    result = few_shot.main([*argv, "--out", str(tmp_path / "out")])
    (row,) = result["datasets"]
    assert row["n_train"] == 4 and row["n_test"] == 6
    test = load_eval_set("senti", data_dir, split="test")
    before = direct_metrics(tiny_dir, test)
    assert_metrics(row["zero_shot"], before)

    train = load_eval_set("senti", data_dir, split="train")
    shots = few_shot.shot_examples(train, 2, seed=0)
    assert sorted(label for e in shots for label in e.true_labels) == ["negative", "negative", "positive", "positive"]
    model = GLiClassModel.from_pretrained(tiny_dir).eval()
    losses = few_shot.fine_tune(model, GLiClassProcessor.from_pretrained(tiny_dir), shots, few_shot.parse_args(argv))
    assert len(losses) == 1 and (row["first_loss"], row["last_loss"]) == (losses[0], losses[-1])  # one batch of 4
    after = direct_metrics(tiny_dir, test, model=model)
    assert_metrics(row["few_shot"], after)
    assert np.abs(after["scores"] - before["scores"]).max() > 1e-6  # the fine-tune changed the model
    with pytest.raises(SystemExit):
        few_shot.select_datasets(data_dir, "emo")  # no test split


def test_few_shot_on_a_train_only_set_holds_the_test_rows_out_of_the_shots(data_dir: Path):
    """`--test-split train` scores a stratified sample of train and draws the shots from the other rows only."""
    full = load_eval_set("emo", data_dir, split="train")
    test, rest = few_shot.scored_and_shot_rows("emo", data_dir, 3, 0, "train", None)
    assert (len(test), len(rest)) == (3, len(full) - 3)
    held = stratified_indices(full.labels, 3, 0)
    assert test.texts == [full.texts[i] for i in held]
    assert rest.texts == [full.texts[i] for i in range(len(full)) if i not in held]
    assert few_shot.select_datasets(data_dir, "emo", "train") == ["emo"]
    with pytest.raises(SystemExit, match="needs a --limit"):
        few_shot.scored_and_shot_rows("emo", data_dir, None, 0, "train", None)


def test_few_shot_wise_alpha_zero_undoes_the_fine_tune(tiny_dir: Path, data_dir: Path, tmp_path: Path):
    """Weight-space ensembling with alpha 0 restores the zero-shot weights, so the few-shot scores are the zero-shot
    ones; alpha 1 (the default) is the plain fine-tune, which moves them; an alpha outside [0, 1] is refused."""
    argv = ["--model", str(tiny_dir), "--data-dir", str(data_dir), "--datasets", "emo", "--test-split", "train"]
    argv += ["--limit", "4", "--shots", "2", "--epochs", "2", "--lr", "1e-2", "--threads", "1"]
    undone = few_shot.main([*argv, "--wise-alpha", "0", "--out", str(tmp_path / "a0")])["datasets"][0]
    assert undone["few_shot"] == pytest.approx(undone["zero_shot"], abs=1e-6)
    tuned = few_shot.main([*argv, "--out", str(tmp_path / "a1")])["datasets"][0]
    assert tuned["zero_shot"] == undone["zero_shot"] and tuned["few_shot"] != tuned["zero_shot"]
    assert "x zero-shot" in (tmp_path / "a0" / "few_shot.md").read_text()
    with pytest.raises(SystemExit, match="wise-alpha"):
        few_shot.main([*argv, "--wise-alpha", "1.5", "--out", str(tmp_path / "bad")])


@pytest.fixture
def tiny_bi_dir(tmp_path: Path, make_tiny) -> Path:
    model, processor = make_tiny(architecture_type="bi-encoder", normalize_features=True)
    out = tmp_path / "tiny_bi"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_prototype_vectors_by_hand(tiny_bi_dir: Path, data_dir: Path):
    """Weight 0 gives each label its own vector, weight 1 the unit mean of its shots' unit text embeddings, and 0.5
    the unit mix of the two (unit-norm features); a label without a shot is left out."""
    model = GLiClassModel.from_pretrained(tiny_bi_dir).eval()
    processor = GLiClassProcessor.from_pretrained(tiny_bi_dir)
    shots = few_shot.shot_examples(load_eval_set("senti", data_dir, split="train"), 2, seed=0)
    names = ["negative", "positive", "unseen"]
    with torch.inference_mode():
        padded = pad_ids(processor.label_ids(names), processor.label_tokenizer.pad_token_id or 0)
        label = model.encode_labels(padded["input_ids"], padded["attention_mask"])
        texts = torch.cat([model(**processor([e.text], [names])).text_embeddings for e in shots])
    unit = torch.nn.functional.normalize
    for weight in (0.0, 0.5, 1.0):
        vectors = few_shot.prototype_vectors(model, processor, shots, names, weight)
        assert sorted(vectors) == ["negative", "positive"]
        for j, name in enumerate(names[:2]):
            rows = [i for i, e in enumerate(shots) if name in e.true_labels]
            mix = (1 - weight) * label[j] + weight * unit(unit(texts[rows], dim=-1).mean(0), dim=0)
            torch.testing.assert_close(vectors[name], unit(mix, dim=0), atol=1e-5, rtol=1e-5)


def test_few_shot_prototypes_end_to_end(tiny_bi_dir: Path, tiny_dir: Path, data_dir: Path, tmp_path: Path):
    """With --prototype-weight the tuned-only scores are those of the same run without it, the prototypes move the
    scores, and the table shows both rows; a uni-encoder (no label vectors) is refused before any tuning."""
    argv = ["--data-dir", str(data_dir), "--datasets", "emo", "--test-split", "train", "--limit", "4"]
    argv += ["--shots", "2", "--epochs", "1", "--threads", "1"]
    plain = few_shot.main(["--model", str(tiny_bi_dir), *argv, "--out", str(tmp_path / "a")])["datasets"][0]
    argv += ["--prototype-weight", "0.5"]
    mixed = few_shot.main(["--model", str(tiny_bi_dir), *argv, "--out", str(tmp_path / "b")])["datasets"][0]
    assert plain["fine_tune_only"] is None
    assert mixed["fine_tune_only"] == plain["few_shot"] and mixed["zero_shot"] == plain["zero_shot"]
    assert mixed["few_shot"]["ece"] != plain["few_shot"]["ece"]
    table = (tmp_path / "b" / "few_shot.md").read_text()
    assert "| 2 (tuned only) |" in table and "| 2 (tuned + prototypes) |" in table and "0.5 x own" in table
    alone = few_shot.main(["--model", str(tiny_bi_dir), *argv, "--epochs", "0", "--out", str(tmp_path / "e")])
    alone = alone["datasets"][0]  # prototypes with no tuning: the tuned-only scores are the zero-shot ones
    assert alone["fine_tune_only"] == alone["zero_shot"] and alone["few_shot"] != alone["zero_shot"]
    table = (tmp_path / "e" / "few_shot.md").read_text()
    assert "| 2 (prototypes, no tuning) |" in table and "tuned only" not in table
    with pytest.raises(SystemExit, match="need a bi-encoder with the dot scorer"):
        few_shot.main(["--model", str(tiny_dir), *argv, "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="prototype-weight must be in"):
        few_shot.main(["--model", str(tiny_bi_dir), *argv, "--prototype-weight", "2", "--out", str(tmp_path / "d")])


@pytest.fixture
def second_tiny_dir(tmp_path: Path, make_tiny) -> Path:
    model, processor = make_tiny(seed=1)
    out = tmp_path / "tiny2"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_zero_shot_several_models_side_by_side(tiny_dir: Path, second_tiny_dir: Path, data_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    argv = ["--model", f"a={tiny_dir}", "--model", f"b={second_tiny_dir}", "--data-dir", str(data_dir)]
    argv += ["--systems", "ours,embed-sim", "--datasets", "senti", "--limit", "4", "--threads", "1"]
    result = zero_shot.main([*argv, "--out", str(out)])
    assert result["order"] == ["a", "b", "embed-sim"]
    (senti,) = result["datasets"]
    assert list(senti["results"]) == ["a", "b", "embed-sim"] and senti["n"] == 4
    assert senti["results"]["a"] != senti["results"]["b"]  # two different models, scored separately
    assert result["run"]["models"] == {"a": str(tiny_dir), "b": str(second_tiny_dir)}
    assert "git_commit" in result["run"]
    markdown = (out / "zero_shot.md").read_text()
    assert "| Dataset | split | n | a | b | embed-sim | ECE a | ECE b | ECE embed-sim |" in markdown
    assert "| AVERAGE |" in markdown and f"- model `b`: `{second_tiny_dir}`" in markdown


def test_model_names_plain_paths_and_bf16_expansion(tiny_dir: Path, second_tiny_dir: Path):
    from gliclass.evaluation.common import resolve_models

    (single,) = resolve_models([str(tiny_dir)])
    assert single.name == "ours" and single.path == tiny_dir  # one plain path: the historical name
    assert [m.name for m in resolve_models([str(tiny_dir), str(second_tiny_dir)])] == ["tiny", "tiny2"]
    models = resolve_models([f"x={tiny_dir}", str(second_tiny_dir)])
    assert zero_shot.expand_systems(["embed-sim", "ours", "ours-bf16"], models) == [
        "embed-sim",
        "x",
        "tiny2",
        "x-bf16",
        "tiny2-bf16",
    ]


def test_model_errors_name_the_culprit(tiny_dir: Path, second_tiny_dir: Path, tmp_path: Path, data_dir: Path):
    with pytest.raises(SystemExit, match="'a' given twice"):
        zero_shot.main(["--model", f"a={tiny_dir}", "--model", f"a={second_tiny_dir}", "--data-dir", str(data_dir)])
    with pytest.raises(SystemExit, match="'tiny' given twice"):
        few_shot.main(["--model", str(tiny_dir), "--model", f"tiny={second_tiny_dir}", "--data-dir", str(data_dir)])
    with pytest.raises(SystemExit, match="nowhere.*does not exist"):
        zero_shot.main(["--model", f"b={tmp_path / 'nowhere'}", "--data-dir", str(data_dir)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty is not a GLiClass model dir"):
        zero_shot.main(["--model", f"c={tmp_path / 'empty'}", "--data-dir", str(data_dir)])
    with pytest.raises(SystemExit, match="taken by a baseline"):
        zero_shot.main(["--model", f"embed-sim={tiny_dir}", "--data-dir", str(data_dir)])


def test_few_shot_several_models(tiny_dir: Path, second_tiny_dir: Path, data_dir: Path, tmp_path: Path):
    argv = ["--model", f"a={tiny_dir}", "--model", f"b={second_tiny_dir}", "--data-dir", str(data_dir)]
    argv += ["--datasets", "senti", "--shots", "1", "--limit", "2", "--epochs", "1", "--threads", "1"]
    result = few_shot.main([*argv, "--out", str(tmp_path / "out")])
    assert [(d["name"], d["model"]) for d in result["datasets"]] == [("senti", "a"), ("senti", "b")]
    assert result["run"]["models"] == {"a": str(tiny_dir), "b": str(second_tiny_dir)}
    table = (tmp_path / "out" / "few_shot.md").read_text()
    assert "| Model | Examples per label | senti | Avg |" in table
    assert "| a | 0 |" in table and "| b | 1 |" in table


def test_git_commit_of_a_shipped_copy_comes_from_the_environment(tmp_path, monkeypatch):
    """$GLICLASS_SOURCE_COMMIT (set by the GPU wrapper from a clean tree) wins, also where the copy has a stale .git
    (the device machine's copy held the session's first commit, so its git said "a421ecd+dirty" for 7cbf7b5's runs);
    without it, git decides, and outside a checkout the commit is "unknown"."""
    from gliclass.evaluation import common

    monkeypatch.delenv("GLICLASS_SOURCE_COMMIT", raising=False)
    assert common.git_commit() not in ("unknown", "abc1234")  # this checkout: git decides
    monkeypatch.setenv("GLICLASS_SOURCE_COMMIT", "abc1234")
    assert common.git_commit() == "abc1234"
    monkeypatch.setattr(common, "REPO_ROOT", tmp_path)
    assert common.git_commit() == "abc1234"
    monkeypatch.delenv("GLICLASS_SOURCE_COMMIT")
    assert common.git_commit() == "unknown"
