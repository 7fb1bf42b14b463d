"""gliclass.data: training format, benchmarks, hub mapping, NLI, dataset/collation and the DataModule."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, tiny_model

from gliclass.data import (
    HUB_SOURCES,
    NLI_LABELS,
    BenchmarkSplit,
    DataFormatError,
    Example,
    GLiClassCollator,
    GLiClassDataset,
    data_root,
    list_benchmarks,
    load_hub_benchmark,
    load_hub_nli,
    nli_examples,
    read_benchmark,
    read_labels,
    read_nli,
    read_training_file,
    to_examples,
    write_training_file,
)
from gliclass.data import benchmarks as benchmarks_module
from gliclass.processing import LabelBudgetError

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "sst2").is_dir(), reason=f"shared benchmark data not found at {SHARED_DATA}"
)


@pytest.fixture(scope="module")
def processor():
    return tiny_model("bert")[1]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"text": "the cat sat", "all_labels": ["cat", "dog", "bird"], "true_labels": ["cat"]}


def make_bench_root(root: Path) -> Path:
    """A tiny benchmark tree: 'tiny' (single-label, 3 labels) and 'multi' (multi-label)."""
    for name, labels, rows in [
        (
            "tiny",
            ["red", "green", "blue"],
            [{"text": f"text {i}", "labels": [["red", "green", "blue"][i % 3]]} for i in range(30)],
        ),
        (
            "multi",
            ["a", "b", "c", "d"],
            [{"text": f"m {i}", "labels": ["a", "b"] if i % 2 else ["c"]} for i in range(10)],
        ),
    ]:
        (root / name).mkdir(parents=True)
        (root / name / "labels.json").write_text(json.dumps(labels))
        write_jsonl(root / name / "train.jsonl", rows)
        write_jsonl(root / name / "test.jsonl", rows[:6])
    return root


# ------------------------------------------------------------------------------------------------ training format
def test_training_format_round_trip(tmp_path, processor):
    examples = [
        Example("hard", ["x", "y"], {"x": 1.0}),
        Example("soft", ["x", "y", "z"], {"x": 0.7, "z": 0.2}, prompt="Classify:"),
        Example("shots", ["x", "y"], {}, examples=[{"text": "demo", "labels": ["y"]}]),
    ]
    for name in ("data.jsonl", "data.json"):
        write_training_file(examples, tmp_path / name)
        back = read_training_file(tmp_path / name)
        assert [(e.text, e.all_labels, e.true_labels, e.prompt, e.examples) for e in back] == [
            (e.text, e.all_labels, e.true_labels, e.prompt, e.examples) for e in examples
        ]
    assert json.loads((tmp_path / "data.jsonl").read_text().splitlines()[0])["true_labels"] == ["x"]
    assert back[1].targets() == [0.7, 0.0, 0.2] and back[1].targets(["z", "x"]) == [0.2, 0.7]
    write_jsonl(tmp_path / "ids.jsonl", [{**GOOD, "id": "r1"}, {**GOOD, "id": 7}])
    with_ids = read_training_file(tmp_path / "ids.jsonl")
    assert [e.meta["id"] for e in with_ids] == ["r1", 7]
    assert GLiClassCollator(processor)([GLiClassDataset(with_ids, processor)[i] for i in (0, 1)])["ids"] == ["r1", 7]


BAD_ROWS = [
    ({"all_labels": ["a"], "true_labels": ["a"]}, "missing field 'text'"),
    ({"text": "t", "true_labels": ["a"]}, "missing field 'all_labels'"),
    ({"text": "t", "all_labels": ["a"]}, "missing field 'true_labels'"),
    ({"text": "t", "all_labels": ["a", "b"], "true_labels": ["c"]}, "not in all_labels"),
    ({"text": "  ", "all_labels": ["a"], "true_labels": ["a"]}, "'text' is empty"),
    ({"text": 3, "all_labels": ["a"], "true_labels": ["a"]}, "'text' must be a string"),
    ({"text": "t", "all_labels": ["a", "a"], "true_labels": ["a"]}, "duplicate label 'a'"),
    ({"text": "t", "all_labels": ["a", "b"], "true_labels": ["a", "a"]}, "duplicate label 'a'"),
    ({"text": "t", "all_labels": ["a", 1], "true_labels": ["a"]}, "non-string label 1"),
    ({"text": "t", "all_labels": [], "true_labels": []}, "'all_labels' is empty"),
    ({"text": "t", "all_labels": "a", "true_labels": []}, "must be a list of strings"),
    ({"text": "t", "all_labels": ["a"], "true_labels": {"a": 1.5}}, "outside [0, 1]"),
    ({"text": "t", "all_labels": ["a"], "true_labels": {"a": -0.1}}, "outside [0, 1]"),
    ({"text": "t", "all_labels": ["a"], "true_labels": {"a": math.nan}}, "outside [0, 1]"),
    ({"text": "t", "all_labels": ["a"], "true_labels": {"a": True}}, "must be a number"),
    ({"text": "t", "all_labels": ["a"], "true_labels": {"a": "1"}}, "must be a number"),
    ({"text": "t", "all_labels": ["<<LABEL>>a"], "true_labels": []}, "reserved token"),
    ({"text": "t", "all_labels": ["a"], "true_labels": [], "prompt": 5}, "'prompt' must be a string"),
    ({"text": "t", "all_labels": ["a"], "true_labels": [], "examples": [{"labels": []}]}, "examples[0] has no 'text'"),
    (["not", "an", "object"], "must be a JSON object"),
    ("{not json", "invalid JSON"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    # JSONL: two good rows, a blank line, then the bad one on line 4
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD, GOOD, "", row])
    with pytest.raises(DataFormatError) as err:
        read_training_file(path)
    assert str(err.value).startswith(f"{path}:4: ") and message in str(err.value)
    if isinstance(row, str):
        return
    # JSON list: the bad row is index 1
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([GOOD, row]))
    with pytest.raises(DataFormatError) as err:
        read_training_file(path)
    assert str(err.value).startswith(f"{path}[1]: ") and message in str(err.value)


def test_reader_limits_and_missing_file(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD] * 5 + ["{broken"])
    assert len(read_training_file(path, limit=5)) == 5  # rows past the limit are not read
    assert read_training_file(path, limit=1)[0].source == f"{path}:1"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_training_file(tmp_path / "nope.jsonl")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(DataFormatError, match="must hold a list"):
        read_training_file(tmp_path / "obj.json")


# ------------------------------------------------------------------------------------------------ benchmarks
def test_data_root_resolution(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir()
    env.mkdir()
    monkeypatch.setenv("GLICLASS_DATA_DIR", str(env))
    assert data_root(explicit) == explicit
    assert data_root() == env
    monkeypatch.setenv("GLICLASS_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"missing.*GLICLASS_DATA_DIR"):
        data_root()
    monkeypatch.delenv("GLICLASS_DATA_DIR")
    repo = Path(__file__).resolve().parents[1]
    assert benchmarks_module.default_data_root() == repo.parent / "shared" / "data"
    monkeypatch.setattr(benchmarks_module, "default_data_root", lambda: tmp_path / "default")
    with pytest.raises(FileNotFoundError, match=r"default.*is unset"):
        data_root()
    with pytest.raises(FileNotFoundError, match="gone.*explicit path"):
        data_root(tmp_path / "gone")


def test_benchmark_reading_and_errors(tmp_path):
    root = make_bench_root(tmp_path)
    assert list_benchmarks(root) == {"multi": ["test", "train"], "tiny": ["test", "train"]}
    bench = read_benchmark("tiny", "train", root, limit=7)
    assert len(bench) == 7 and bench.labels == ["red", "green", "blue"] and not bench.multi_label
    assert bench.rows[2].source == f"{root / 'tiny' / 'train.jsonl'}:3"
    assert read_benchmark("multi", "train", root).multi_label  # inferred from rows with several labels
    with pytest.raises(FileNotFoundError, match=r"has splits \['test', 'train'\]"):
        read_benchmark("tiny", "validation", root)
    with pytest.raises(FileNotFoundError, match="benchmark 'absent' not found"):
        read_benchmark("absent", "test", root)
    write_jsonl(root / "tiny" / "bad.jsonl", [{"text": "ok", "labels": ["red"]}, {"text": "x", "labels": ["purple"]}])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: labels \['purple'\] are not in"):
        read_benchmark("tiny", "bad", root)


def test_negative_sampling_is_seeded_and_varied(tmp_path):
    root = make_bench_root(tmp_path)
    labels = [f"l{i}" for i in range(10)]
    bench = BenchmarkSplit("b", "train", labels, True, [])
    bench.rows = [benchmarks_module.BenchmarkRow(f"t{i}", labels[i % 3 : i % 3 + 2], f"f:{i}") for i in range(200)]
    sampled = to_examples(bench, min_negatives=2, max_negatives=5, seed=3)
    for row, ex in zip(bench.rows, sampled, strict=True):
        assert set(row.labels) <= set(ex.all_labels) and ex.positives == [x for x in ex.all_labels if x in row.labels]
        assert 2 <= len(ex.all_labels) - len(row.labels) <= 5 and len(set(ex.all_labels)) == len(ex.all_labels)
    assert len({len(ex.all_labels) for ex in sampled}) == 4  # 2..5 negatives all occur
    assert [e.all_labels for e in to_examples(bench, min_negatives=2, max_negatives=5, seed=3)] == [
        e.all_labels for e in sampled
    ]
    assert [e.all_labels for e in to_examples(bench, min_negatives=2, max_negatives=5, seed=4)] != [
        e.all_labels for e in sampled
    ]
    full = to_examples(read_benchmark("tiny", "test", root), all_labels=True)
    assert all(e.all_labels == ["red", "green", "blue"] for e in full)
    assert full[1].true_labels == {"green": 1.0}
    with pytest.raises(ValueError, match="min_negatives"):
        to_examples(bench, min_negatives=3, max_negatives=1)


@needs_shared
def test_real_benchmarks_and_multi_label_flags():
    available = list_benchmarks(SHARED_DATA)
    assert {"sst2", "go_emotions", "sem_eval_2018_ec"} <= set(available) and "test" in available["sst2"]
    sst2 = read_benchmark("sst2", "test", SHARED_DATA, limit=5)
    assert len(sst2) == 5 and sst2.labels == ["negative", "positive"] and not sst2.multi_label
    head = read_benchmark("imdb", "test", SHARED_DATA, limit=20)
    sample = read_benchmark("imdb", "test", SHARED_DATA, limit=20, sample_seed=0)
    assert len({r.labels[0] for r in head.rows}) == 1 and len({r.labels[0] for r in sample.rows}) == 2  # sorted file
    assert [r.source for r in sample.rows] == [
        r.source for r in read_benchmark("imdb", "test", SHARED_DATA, 20, 0).rows
    ]
    lines = [int(r.source.rsplit(":", 1)[1]) for r in sample.rows]
    assert lines == sorted(lines)
    for name in ("go_emotions", "sem_eval_2018_ec"):
        bench = read_benchmark(name, "train", SHARED_DATA, limit=3)
        assert bench.multi_label, name  # known multi-label even when the first rows have one label each


# ------------------------------------------------------------------------------------------------ hub
class FakeFeature:
    def __init__(self, names=None, feature=None):
        self.names, self.feature = names, feature


class FakeHubDataset(list):
    def __init__(self, rows, features=None):
        super().__init__(rows)
        self.features = features or {}


def test_hub_mapping_with_fake_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        if path == "SetFit/enron_spam":
            return FakeHubDataset([{"text": "buy now", "label_text": "spam"}, {"text": "hi", "label_text": "ham"}])
        if path == "PolyAI/banking77":
            names = ["card_arrival", "Lost_or_stolen_card"]
            return FakeHubDataset([{"text": "where is it", "label": 0}], {"label": FakeFeature(names)})
        if path == "google-research-datasets/go_emotions":
            feature = FakeFeature(feature=FakeFeature(["joy", "anger", "neutral"]))
            return FakeHubDataset(
                [{"text": "yay", "labels": [0, 2]}, {"text": "grr", "labels": [1]}], {"labels": feature}
            )
        if path == "SemEvalWorkshop/sem_eval_2018_task_1":
            cols = HUB_SOURCES["sem_eval_2018_ec"].label_columns
            return FakeHubDataset([{"Tweet": "wow", **{c: c in ("joy", "surprise") for c in cols}}])
        if path == "dair-ai/emotion":
            return FakeHubDataset([{"text": f"e{i}", "label": i % 6} for i in range(10)])
        raise AssertionError(path)

    monkeypatch.setattr("gliclass.data.hub.import_load_dataset", lambda: fake_load_dataset)
    spam = load_hub_benchmark("spam", "test")
    assert [r.labels for r in spam.rows] == [["spam"], ["not spam"]] and spam.labels == ["not spam", "spam"]
    assert load_hub_benchmark("banking77", "train").labels == ["card arrival", "lost or stolen card"]
    go = load_hub_benchmark("go_emotions", "train")
    assert go.multi_label and [r.labels for r in go.rows] == [["joy", "neutral"], ["anger"]]
    sem = load_hub_benchmark("sem_eval_2018_ec", "train")
    assert sem.multi_label and sem.rows[0].labels == ["joy", "surprise"]
    emotion = load_hub_benchmark("emotion", "validation", limit=4)
    assert len(emotion) == 4 and emotion.rows[3].labels == ["anger"] and not emotion.multi_label
    assert calls[-1] == ("dair-ai/emotion", "split", "validation")
    examples = to_examples(emotion, min_negatives=1, max_negatives=2, seed=0)
    assert all(e.positives == [r.labels[0]] for e, r in zip(examples, emotion.rows, strict=True))
    bad = lambda *a, **k: FakeHubDataset([{"text": "x", "label": 9}])  # noqa: E731
    with pytest.raises(DataFormatError, match=r"hub:dair-ai/emotion/split/test\[0\]: label id 9"):
        load_hub_benchmark("emotion", "test", load_dataset=bad)
    with pytest.raises(KeyError, match="no hub source for 'snips'"):
        load_hub_benchmark("snips")


def test_hub_nli_with_fake_load_dataset():
    rows = [{"premise": "p", "hypothesis": "h", "label": 0}, {"premise": "p", "hypothesis": "g", "label": -1}]
    pairs = load_hub_nli("test", load_dataset=lambda *a, **k: rows)
    assert [(p.hypothesis, p.label) for p in pairs] == [("h", "entailment")]  # no-gold pairs dropped


def test_missing_datasets_package_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        load_hub_benchmark("sst2", "test")


@needs_shared
def test_hub_label_names_match_local_files():
    for name, source in HUB_SOURCES.items():
        names = source.label_columns or source.label_names
        if names and (SHARED_DATA / name).is_dir():
            assert [source.label_map.get(n, n) for n in names] == read_labels(name, SHARED_DATA), name


# ------------------------------------------------------------------------------------------------ NLI
def test_nli_formulations(tmp_path):
    rows = [
        {"premise": "A dog runs .", "hypothesis": "An animal moves .", "label": "entailment"},
        {"premise": "A dog runs .", "hypothesis": "A cat sleeps .", "label": "contradiction"},
        {"premise": "A dog runs .", "hypothesis": "The dog is happy .", "label": "neutral"},
        {"premise": "A dog runs .", "hypothesis": "The dog is happy .", "label": "entailment"},
        {"premise": "Men talk .", "hypothesis": "Men are silent .", "label": "contradiction"},
    ]
    (tmp_path / "snli").mkdir()
    path = write_jsonl(tmp_path / "snli" / "validation.jsonl", rows)
    pairs = read_nli("validation", tmp_path)
    grouped = nli_examples(pairs)
    assert [e.text for e in grouped] == ["A dog runs .", "Men talk ."]
    assert grouped[0].all_labels == ["An animal moves .", "A cat sleeps .", "The dog is happy ."]
    assert grouped[0].true_labels == {"An animal moves .": 1.0, "The dog is happy .": 0.5}  # annotators disagree
    assert grouped[1].true_labels == {} and grouped[0].source == f"{path}:1"
    extra = nli_examples(pairs, extra_negatives=1, seed=0)
    assert "Men are silent ." in extra[0].all_labels and extra[0].true_labels == grouped[0].true_labels
    relation = nli_examples(pairs, formulation="relation")
    assert len(relation) == 5 and relation[1].all_labels == list(NLI_LABELS)
    assert relation[1].text == "A dog runs .\nHypothesis: A cat sleeps ." and relation[1].true_labels == {
        "contradiction": 1.0
    }
    write_jsonl(path, rows[:2] + [{"premise": "x", "hypothesis": "y", "label": "maybe"}])
    with pytest.raises(DataFormatError, match=r"validation\.jsonl:3: label 'maybe'"):
        read_nli("validation", tmp_path)


@needs_shared
def test_real_snli_grouping():
    examples = nli_examples(read_nli("validation", SHARED_DATA, limit=30))
    assert 5 <= len(examples) <= 30
    assert all(set(e.true_labels) <= set(e.all_labels) and e.text not in e.all_labels for e in examples)
    assert sum(len(e.all_labels) for e in examples) <= 30 and any(e.true_labels for e in examples)


# ------------------------------------------------------------------------------------------------ dataset + collate
def soft_examples() -> list[Example]:
    labels = [f"label {i}" for i in range(6)]
    return [
        Example(f"text number {i}", labels[: 2 + i % 5], {labels[i % 2]: 1.0, labels[1 + i % 2]: 0.25}, source=f"f:{i}")
        for i in range(12)
    ]


def test_label_shuffling_keeps_targets_aligned(processor):
    examples = soft_examples()
    dataset = GLiClassDataset(examples, processor, shuffle_labels=True, seed=0)
    orders = set()
    for _ in range(4):
        for index, example in enumerate(examples):
            item = dataset[index]
            assert sorted(item["label_names"]) == sorted(example.all_labels)
            assert item["targets"] == [example.true_labels.get(label, 0.0) for label in item["label_names"]]
            orders.add((index, tuple(item["label_names"])))
    assert len(orders) > 2 * len(examples)  # orders change between accesses
    dataset.set_draws(5)
    first = dataset[3]["label_names"]
    dataset.set_draws(5)
    assert dataset[3]["label_names"] == first  # the draw count fixes the order (what a resumed run restores)
    again = GLiClassDataset(examples, processor, shuffle_labels=True, seed=0)
    fresh = GLiClassDataset(examples, processor, shuffle_labels=True, seed=0)
    assert [again[i]["label_names"] for i in range(12)] == [fresh[i]["label_names"] for i in range(12)]
    fixed = GLiClassDataset(examples, processor)
    assert all(fixed[i]["label_names"] == e.all_labels for i, e in enumerate(examples))

    collate = GLiClassCollator(processor)
    items = [dataset[i] for i in range(5)]
    batch = collate(items)
    assert batch["targets"].shape == batch["labels_mask"].shape == (5, 6) and batch["targets"].dtype == torch.float
    assert batch["label_names"] == [it["label_names"] for it in items]
    assert batch["texts"] == [e.text for e in examples[:5]] and "ids" not in batch
    for row, item in enumerate(items):
        n = len(item["label_names"])
        assert batch["targets"][row, :n].tolist() == item["targets"] and batch["labels_mask"][row, :n].all()
        assert not batch["targets"][row, n:].any() and not batch["labels_mask"][row, n:].any()
    for key in ("input_ids", "attention_mask"):
        assert batch[key].shape[0] == 5


def test_label_budget_error_names_the_row(processor):
    labels = [" ".join(["word"] * 10) + f" {i}" for i in range(30)]  # far over the tiny 128-token budget
    dataset = GLiClassDataset([Example("short text", labels, {}, source="data.jsonl:17")], processor)
    with pytest.raises(LabelBudgetError, match=r"^data\.jsonl:17: labels, prompt and examples need"):
        dataset[0]


def test_training_rows_over_budget_drop_trailing_negatives_never_positives(processor):
    text = " ".join(["the movie was good but the food was bad"] * 4)  # 36 tokens
    labels = [f"very good food number {i}" for i in range(30)]  # ~6 tokens each: far over the 128-token budget
    scores = {labels[3]: 1.0, labels[20]: 0.5, labels[29]: 1.0}
    example = Example(text, labels, scores, source="train.jsonl:4")
    with pytest.raises(LabelBudgetError, match=r"^train\.jsonl:4: labels, prompt and examples need"):
        GLiClassDataset([example], processor)[0]  # off by default (evaluation must see every label)

    dataset = GLiClassDataset([example, Example("short text", labels[:3], {labels[0]: 1.0})], processor,
                              shuffle_labels=True, seed=1, trim_labels_to_fit=True)  # fmt: skip
    for draws in range(3):
        dataset.set_draws(draws)
        order = dataset.label_order(0)
        dataset.set_draws(draws)
        item = dataset[0]
        kept, trimmed = item["label_names"], item["labels_trimmed"]
        negatives = [label for label in order if label not in scores]
        dropped = set(negatives[len(negatives) - trimmed :])
        assert 0 < trimmed < len(negatives) and kept == [label for label in order if label not in dropped]
        assert set(scores) <= set(kept) and item["targets"] == [scores.get(label, 0.0) for label in kept]
        ids = item["input_ids"]
        assert len(ids) <= processor.budget and ids.count(processor.config.class_token_index) == len(kept)
        seg = processor.segments(text, kept)
        text_tokens = len(ids) - len(processor.tokenizer(seg.prefix + seg.suffix)["input_ids"])
        assert text_tokens >= processor.min_text_tokens
        one_more = [label for label in order if label not in dropped or label == negatives[-trimmed]]
        with pytest.raises(LabelBudgetError):  # the fewest dropped: one label fewer does not fit
            processor.encode(text, one_more)

    batch = GLiClassCollator(processor)([dataset[0], dataset[1], dataset[0]])
    assert dataset[1]["labels_trimmed"] == 0 and batch["rows_trimmed"] == 2
    assert batch["targets"].shape == batch["labels_mask"].shape


def test_trimming_keeps_positives_and_names_the_row_when_they_alone_do_not_fit(processor):
    labels = [" ".join(["word"] * 10) + f" {i}" for i in range(30)]  # 12 tokens each
    positives = {label: 1.0 for label in labels[:12]}  # 144 tokens of positives alone: over 128
    dataset = GLiClassDataset(
        [Example("short text", labels, positives, source="data.jsonl:9")], processor, trim_labels_to_fit=True
    )
    with pytest.raises(LabelBudgetError, match=r"^data\.jsonl:9: .*even with only its 12 positive label"):
        dataset[0]
    no_negatives = Example("short text", labels[:12], positives, source="data.jsonl:10")
    with pytest.raises(LabelBudgetError, match=r"^data\.jsonl:10: .*no negative label to drop"):
        GLiClassDataset([no_negatives], processor, trim_labels_to_fit=True)[0]
    all_negative = Example("the movie was good", labels, {}, source="data.jsonl:11")  # keeps what fits, >= 1 label
    item = GLiClassDataset([all_negative], processor, trim_labels_to_fit=True)[0]
    assert item["label_names"] == labels[: len(item["label_names"])] and item["targets"] == [0.0] * len(
        item["label_names"]
    )
    assert item["labels_trimmed"] == 30 - len(item["label_names"]) > 0


def test_worker_shuffles_are_seeded_and_aligned(processor):
    examples = soft_examples()

    def run() -> list[list[str]]:
        dataset = GLiClassDataset(examples, processor, shuffle_labels=True, seed=5)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=4,
            collate_fn=GLiClassCollator(processor),
            num_workers=1,
            generator=torch.Generator().manual_seed(0),
        )
        names = []
        for batch in loader:  # sequential: the batch rows are examples[len(names):]
            for row, labels in enumerate(batch["label_names"]):
                example = examples[len(names) + row]
                assert sorted(labels) == sorted(example.all_labels)
                expected = [example.true_labels.get(label, 0.0) for label in labels]
                assert batch["targets"][row, : len(labels)].tolist() == expected
            names += batch["label_names"]
        return names

    assert run() == run()
