"""gliclass.data: the pattern-focused stream and GLiClassDataModule."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, tiny_model

from gliclass.data import (
    LENGTH_BUCKETS,
    Example,
    bucket_of,
    pattern_stream,
    read_benchmark,
    to_examples,
    word_count,
    write_training_file,
)
from gliclass.data.datamodule import GLiClassDataModule
from gliclass.data.patterns import fits_whole

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "sst2").is_dir(), reason=f"shared benchmark data not found at {SHARED_DATA}"
)
BUCKETS = list(zip(LENGTH_BUCKETS[:-1], LENGTH_BUCKETS[1:], strict=True))


@pytest.fixture(scope="module")
def processor():
    return tiny_model("bert")[1]


def token_pool() -> list[Example]:
    """Texts made of their positive labels' names, so the labels a text supports can be read off its words.

    Group "A": single-label over 8 labels, 1..12 words; group "B": multi-label over 5 labels, 2..20 words.
    """
    pool = []
    a_labels = [f"a{i}" for i in range(8)]
    for i in range(80):
        label = a_labels[i % 8]
        pool.append(Example(" ".join([label] * (1 + i % 12)), a_labels, {label: 1.0}, meta={"dataset": "A"}))
    b_labels = [f"b{i}" for i in range(5)]
    for i in range(40):
        positives = b_labels[i % 5 : i % 5 + 2]
        words = " ".join(positives * (1 + i % 10))
        pool.append(Example(words, b_labels, dict.fromkeys(positives, 0.8), meta={"dataset": "B"}))
    return pool


def test_bucket_of():
    assert bucket_of(1) == (0, 4) and bucket_of(4) == (0, 4) and bucket_of(5) == (4, 8)
    assert bucket_of(1024) == (768, 1024) and bucket_of(1025) is None and bucket_of(0) is None


def test_pattern_stream_buckets_labels_and_densities():
    pool = token_pool()
    stream = pattern_stream(pool, examples_per_bucket=6, seed=0, max_labels=6, copies=2)
    assert len(stream) == len(BUCKETS) * 6 * 2
    assert Counter(e.meta["bucket"] for e in stream) == dict.fromkeys(BUCKETS, 12)  # filled equally
    for example in stream:
        assert bucket_of(word_count(example.text)) == example.meta["bucket"]
        words = set(example.text.split())
        # positives are the union of the pieces' labels; negatives never occur in the text
        assert set(example.true_labels) <= words and not (set(example.all_labels) - set(example.true_labels)) & words
        assert 1 <= len(example.all_labels) <= 6 and len(set(example.all_labels)) == len(example.all_labels)
        assert {label[0] for label in example.all_labels} == {example.meta["dataset"].lower()}  # one label space
        assert example.meta["density"] == len(example.true_labels) / len(example.all_labels)
    assert any(e.meta["pieces"] > 10 for e in stream)  # long buckets need concatenation
    assert {e.true_labels[next(iter(e.true_labels))] for e in stream if e.true_labels} == {1.0, 0.8}  # soft kept
    # each base example appears twice, with different densities
    pairs = list(zip(stream[::2], stream[1::2], strict=True))
    assert all(a.text == b.text and (a.meta["copy"], b.meta["copy"]) == (0, 1) for a, b in pairs)
    differ = sum(a.meta["density"] != b.meta["density"] for a, b in pairs)
    assert differ >= 0.9 * len(pairs)
    assert sum(b.meta["density"] - a.meta["density"] for a, b in pairs) > 0  # copy 1 is the denser on average
    assert len({e.meta["density"] for e in stream}) >= 5 and len({len(e.all_labels) for e in stream}) >= 5


def test_pattern_stream_is_deterministic():
    pool = token_pool()

    def key(stream: list[Example]) -> list:
        return [(e.text, e.all_labels, e.true_labels) for e in stream]

    first = pattern_stream(pool, 3, seed=7)
    assert key(first) == key(pattern_stream(pool, 3, seed=7))
    assert key(first) != key(pattern_stream(pool, 3, seed=8))


def test_pattern_stream_warns_on_unfillable_bucket():
    pool = [Example(" ".join(["long"] * 10), ["x", "y"], {"x": 1.0}), Example("w " * 9, ["x", "y"], {"y": 1.0})]
    with pytest.warns(UserWarning) as caught:
        stream = pattern_stream(pool, 2, seed=0, buckets=(0, 4, 8, 16, 24))
    assert [str(w.message)[:43] for w in caught] == [
        "pattern stream: bucket (0,4] words got 0/2 ",
        "pattern stream: bucket (4,8] words got 0/2 ",
    ]
    assert Counter(e.meta["bucket"] for e in stream) == {(8, 16): 4, (16, 24): 4}


@needs_shared
def test_pattern_stream_from_real_pool():
    pool = to_examples(read_benchmark("sst2", "train", SHARED_DATA, limit=150))
    pool += to_examples(read_benchmark("mpqa", "train", SHARED_DATA, limit=150))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every bucket fillable
        stream = pattern_stream(pool, 1, seed=0)
    assert Counter(e.meta["bucket"] for e in stream) == dict.fromkeys(BUCKETS, 2)


# ------------------------------------------------------------------------------------------------ DataModule
def make_sources(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    for name, labels, multi in [("tiny", ["red", "green", "blue", "black"], False), ("multi", ["a", "b", "c"], True)]:
        (root / name).mkdir(parents=True)
        (root / name / "labels.json").write_text(json.dumps(labels))
        rows = [
            {"text": f"{name} {{split}} text {i}", "labels": labels[i % 2 : i % 2 + 2] if multi else [labels[i % 4]]}
            for i in range(20)
        ]
        for split in ("train", "test"):  # other texts in each split: the near-duplicate filter keeps every row
            lines = [json.dumps(r | {"text": r["text"].format(split=split)}) + "\n" for r in rows]
            (root / name / f"{split}.jsonl").write_text("".join(lines))
    train_file = tmp_path / "train.jsonl"
    write_training_file(
        [Example(f"file row {i}", ["yes", "no", "maybe"], {"yes": 0.9} if i % 2 else {"no": 1.0}) for i in range(20)],
        train_file,
    )
    return root, train_file


def test_datamodule_split_batches_and_eval(tmp_path, processor):
    root, train_file = make_sources(tmp_path)

    def build(seed: int = 1, **kwargs) -> GLiClassDataModule:
        dm = GLiClassDataModule(
            processor,
            train_files=[str(train_file)],
            benchmarks=["tiny:train", {"name": "multi", "split": "train", "limit": 10}],
            eval_datasets=["tiny", "multi:test:5"],
            data_dir=str(root),
            seed=seed,
            batch_size=4,
            min_negatives=1,
            max_negatives=2,
            **kwargs,
        )
        dm.setup("fit")
        return dm

    dm = build()
    assert (len(dm.train_examples), len(dm.val_examples)) == (45, 5)  # 90/10 of 20 + 20 + 10
    assert {e.text for e in dm.train_examples}.isdisjoint(e.text for e in dm.val_examples)
    assert [e.text for e in build().val_examples] == [e.text for e in dm.val_examples]  # seeded
    assert [e.text for e in build(seed=2).val_examples] != [e.text for e in dm.val_examples]
    assert len(build(max_train_examples=7).train_examples) == 7

    batch = next(iter(dm.train_dataloader()))
    assert {"input_ids", "attention_mask", "labels_mask", "targets", "label_names"} <= set(batch)
    assert batch["input_ids"].shape[0] == 4 and batch["targets"].shape == batch["labels_mask"].shape
    assert [len(names) for names in batch["label_names"]] == batch["labels_mask"].sum(1).tolist()
    val = next(iter(dm.val_dataloader()))
    assert val["targets"].shape[0] == 4

    assert dm.eval_names == ["tiny", "multi"]
    assert dm.eval_multi_label == {"tiny": False, "multi": True}
    assert dm.eval_labels == {"tiny": ["red", "green", "blue", "black"], "multi": ["a", "b", "c"]}
    loaders = dm.test_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [20, 5]
    for name, loader in zip(dm.eval_names, loaders, strict=True):
        for test_batch in loader:
            assert all(names == dm.eval_labels[name] for names in test_batch["label_names"])  # all labels, in order
            assert test_batch["labels_mask"].all() and (test_batch["targets"].sum(1) >= 1).all()
    multi_batch = next(iter(loaders[1]))
    rows = [int(e.text.split()[-1]) for e in dm.eval_examples("multi")[:4]]  # "multi test text {i}": labels by i % 2
    assert multi_batch["targets"].tolist() == [[0.0, 1.0, 1.0] if i % 2 else [1.0, 1.0, 0.0] for i in rows]
    sampled = [int(e.text.split()[-1]) for e in dm.eval_examples("multi")]
    assert sampled == sorted(sampled) and sampled != list(range(5))  # a seeded sample (of 20 rows) in file order
    head = build(sample_limits=False)
    assert [e.text for e in head.eval_examples("multi")] == [f"multi test text {i}" for i in range(5)]


def test_datamodule_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="name\\[:split\\[:limit\\]\\]"):
        GLiClassDataModule(benchmarks=["a:b:3:4"])
    with pytest.raises(ValueError, match="twice"):
        GLiClassDataModule(eval_datasets=["sst2", "sst2:validation"])
    with pytest.raises(ValueError, match="val_fraction"):
        GLiClassDataModule(val_fraction=1.0)
    root, train_file = make_sources(tmp_path)
    dm = GLiClassDataModule(train_files=[str(train_file)], data_dir=str(root))
    with pytest.raises(RuntimeError, match="needs a processor"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="no training data"):
        GLiClassDataModule(data_dir=str(root)).setup("fit")


@needs_shared
def test_datamodule_real_mix(processor):
    dm = GLiClassDataModule(
        processor,
        benchmarks=["sst2:train:40", "go_emotions:train:20"],
        nli=["validation:30"],
        pattern_examples_per_bucket=1,
        pattern_max_labels=3,  # SNLI hypotheses are long labels for the tiny model's 128-token budget
        eval_datasets=["sst2:test:8", "go_emotions:train:8", "sem_eval_2018_ec:train:8"],
        data_dir=str(SHARED_DATA),
        batch_size=8,
        seed=0,
        max_negatives=3,  # go_emotions' 28 labels overflow the tiny model's 128-token budget
        # this mix trains on go_emotions rows and scores go_emotions, to test the loaders on real rows; the
        # near-duplicate filter, which would drop them, is tested in tests/test_overlap.py
        exclude_near_duplicates=False,
    )
    dm.setup("fit")
    patterns = [e for e in dm.train_examples if "bucket" in e.meta]
    # copies over the tiny model's 128-token budget keep their leading pieces that fit; a long text alone is dropped
    assert len(BUCKETS) * 2 - 3 <= len(patterns) <= len(BUCKETS) * 2
    assert all(fits_whole(processor)(example.text, example.all_labels) for example in patterns)
    assert dm.eval_multi_label == {"sst2": False, "go_emotions": True, "sem_eval_2018_ec": True}
    assert len(dm.eval_labels["go_emotions"]) == 28 and len(dm.eval_labels["sem_eval_2018_ec"]) == 11
    batch = next(iter(dm.train_dataloader()))
    assert batch["targets"].dtype == torch.float and batch["input_ids"].shape[1] <= processor.budget
    test_batch = next(iter(dm.test_dataloader()[0]))
    assert test_batch["targets"].shape == (8, 2) and dm.eval_labels["sst2"] == test_batch["label_names"][0]
