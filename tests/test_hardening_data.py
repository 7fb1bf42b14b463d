"""Data hardening (issue 12): exact resume with loader workers, pattern examples within the length budget, and no
data config that evaluates on rows it trains on."""

from __future__ import annotations

import os
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from conftest import SHARED_DATA, tiny_model
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gliclass.data import (
    LENGTH_BUCKETS,
    Example,
    GLiClassCollator,
    GLiClassDataset,
    bucket_of,
    pattern_stream,
    read_benchmark,
    read_nli,
    read_training_file,
    word_count,
    write_training_file,
)
from gliclass.data.datamodule import BenchmarkSpec, GLiClassDataModule
from gliclass.data.resumable import EpochSampler, ResumableLoader

ROOT = Path(__file__).resolve().parents[1]
DATA_CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "data").glob("*.yaml"))
needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "sst2").is_dir(), reason=f"shared benchmark data not found at {SHARED_DATA}"
)
WORDS = ["movie", "food", "music", "weather", "travel", "health"]  # one token each in the tiny vocabulary


@pytest.fixture(scope="module")
def processor():
    return tiny_model("bert")[1]  # uni-encoder, 128-token budget


def word_examples(count: int = 60) -> list[Example]:
    """Texts made of their positive labels' names (1-12 words), so the labels a text supports can be read off it."""
    out = []
    for i in range(count):
        positives = WORDS[i % 6 : i % 6 + 1 + i % 2]
        text = " ".join((positives * 12)[: len(positives) + i % 11])
        out.append(Example(text, list(WORDS), dict.fromkeys(positives, 1.0), source=f"words:{i}"))
    return out


# ------------------------------------------------------------------------------------------------ 14: exact resume
def loader_for(examples: list[Example], processor, workers: int) -> ResumableLoader:
    """The datamodule's training loader, on a fresh dataset object (as a new process would build it)."""
    dataset = GLiClassDataset(examples, processor, shuffle_labels=True, seed=3, trim_labels_to_fit=True)
    sampler = EpochSampler(len(dataset), seed=3, batch_size=4, tag_draws=True)
    collate = GLiClassCollator(processor)
    return ResumableLoader(dataset, batch_size=4, sampler=sampler, collate_fn=collate, num_workers=workers)


def take(loader: ResumableLoader, epochs: int, stop: int | None = None) -> tuple[list, dict]:
    """(texts and label orders of each batch, loader state) from the sampler's epoch on, as Lightning drives it:
    `set_epoch` before each epoch, the state read after `stop` batches (after everything when None)."""
    seen = []
    for epoch in range(loader.sampler.epoch, epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            seen.append((batch["texts"], batch["label_names"]))
            if len(seen) == stop:
                return seen, loader.state_dict()
    return seen, loader.state_dict()


# 4 batches an epoch: mid-epoch, at its end, into epoch 2 and late in it
@pytest.mark.parametrize("stop,position", [(2, (0, 8)), (4, (0, 16)), (5, (1, 4)), (7, (1, 12))])
def test_a_resumed_loader_with_workers_yields_what_an_unbroken_one_does(processor, stop, position):
    examples = word_examples(16)
    unbroken, _ = take(loader_for(examples, processor, workers=0), epochs=2)
    assert len(unbroken) == 8 and unbroken[:4] != unbroken[4:]  # epochs differ in order and label orders
    with_workers, _ = take(loader_for(examples, processor, workers=2), epochs=2)
    assert with_workers == unbroken  # label orders do not depend on which process encodes a row
    before, state = take(loader_for(examples, processor, workers=2), epochs=2, stop=stop)
    # workers have taken up to 4 batches more than were handed out: the state counts the handed-out ones
    assert state == {"epoch": position[0], "yielded": position[1]}
    resumed = loader_for(examples, processor, workers=2)
    resumed.load_state_dict(state)
    after, _ = take(resumed, epochs=2)
    assert before + after == unbroken


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_state_before_its_first_batch_is_where_the_pass_will_start(processor, workers):
    loader = loader_for(word_examples(16), processor, workers=workers)
    loader.load_state_dict({"epoch": 1, "yielded": 8})
    iterator = iter(loader)  # workers start and take batches (the sampler's pass begins); none is handed out
    assert loader.state_dict() == {"epoch": 1, "yielded": 8}
    next(iterator)
    assert loader.state_dict() == {"epoch": 1, "yielded": 12}
    del iterator


def test_a_drawn_label_order_is_the_main_process_order_of_that_draw(processor):
    dataset = GLiClassDataset(word_examples(6), processor, shuffle_labels=True, seed=3)
    for draw in (1, 7, 40):
        dataset.set_draws(draw - 1)
        assert dataset.label_order(2) == dataset.label_order(2, draw) == dataset[2, draw]["label_names"]
    assert len({tuple(dataset[2, draw]["label_names"]) for draw in range(1, 30)}) > 10


# ------------------------------------------------------------------------------------------------ 15: pattern budget
def labels_read_off(example: Example) -> None:
    """Positives are words of the text, negatives are not (the texts are their positives' names)."""
    words = set(example.text.split())
    assert set(example.true_labels) <= words, example.source
    assert not (set(example.all_labels) - set(example.true_labels)) & words, example.source


def test_pattern_examples_over_the_budget_keep_the_pieces_that_fit_and_only_their_labels():
    def fits(text: str, labels: list[str]) -> bool:  # a budget of 40 "tokens": a word each, and a label each
        return word_count(text) + len(labels) <= 40

    pool = word_examples()
    stream = pattern_stream(pool, examples_per_bucket=4, seed=0, max_labels=6, copies=2, fits=fits)
    unlimited = pattern_stream(pool, examples_per_bucket=4, seed=0, max_labels=6, copies=2)
    assert len(stream) == len(unlimited)  # every piece fits alone: no example is lost, long ones are cut
    for example in stream:
        assert fits(example.text, example.all_labels)
        assert example.meta["bucket"] == bucket_of(word_count(example.text))
        assert example.meta["density"] == len(example.true_labels) / len(example.all_labels)
        labels_read_off(example)
    buckets = Counter(example.meta["bucket"] for example in stream)
    assert max(hi for _, hi in buckets) == 48 and buckets[(32, 48)] > 2 * 8  # the long buckets' examples land here
    assert any(example.meta["pieces"] > 3 for example in stream)

    long_text = Example(" ".join(["movie"] * 50), list(WORDS), {"movie": 1.0}, source="long", meta={"dataset": "L"})
    with pytest.warns(UserWarning, match="no texts short enough"):
        alone = pattern_stream([long_text], examples_per_bucket=2, seed=0, fits=fits)
    assert alone == []  # its one piece is over the budget: dropped, never cut


def test_pattern_examples_of_the_datamodule_fit_the_processor_budget_whole(processor, tmp_path):
    path = tmp_path / "words.jsonl"
    write_training_file(word_examples(), path)
    dm = GLiClassDataModule(processor, train_files=[str(path)], pattern_examples_per_bucket=3, pattern_max_labels=6)
    dm.setup("fit")
    patterns = [example for example in dm.train_examples if "bucket" in example.meta]
    assert len(patterns) == (len(LENGTH_BUCKETS) - 1) * 3 * 2  # every copy kept (a 12-word piece always fits)
    assert max(word_count(example.text) for example in patterns) > 64  # and the long ones are as long as fits
    config = processor.config
    for example in patterns:
        labels_read_off(example)
        ids = processor.encode(example.text, example.all_labels)["input_ids"]
        if config.prompt_first:  # the text follows the label block's <<SEP>>
            text_ids = ids[ids.index(config.text_token_index) + 1 :]
        else:  # the text precedes the label block's first <<LABEL>>
            text_ids = ids[: ids.index(config.class_token_index)]
        kept = processor.tokenizer.decode(text_ids, skip_special_tokens=True)
        assert kept.split() == example.text.split(), example.source  # nothing cut: every positive's evidence kept


def test_the_pattern_stream_needs_the_processor(tmp_path):
    path = tmp_path / "words.jsonl"
    write_training_file(word_examples(), path)
    with pytest.raises(RuntimeError, match="needs a processor"):
        GLiClassDataModule(train_files=[str(path)], pattern_examples_per_bucket=1).setup("fit")


# ------------------------------------------------------------------------------------------------ 16: eval held out
@pytest.fixture(scope="module")
def data_configs() -> dict[str, DictConfig]:
    GlobalHydra.instance().clear()
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield {name: compose(config_name="train", overrides=[f"data={name}"]).data for name in DATA_CONFIGS}
    GlobalHydra.instance().clear()


def training_splits(data: DictConfig) -> set[tuple[str, str]]:
    """(dataset, split) of every benchmark and SNLI split a data config trains on (training files are by text)."""
    splits = {(spec.name, spec.split) for spec in (BenchmarkSpec.parse(s, "train") for s in data.benchmarks)}
    for spec in data.get("nli") or []:
        splits.add(("snli", spec.split(":")[0] if isinstance(spec, str) else spec.get("split", "validation")))
    return splits


def eval_splits(data: DictConfig) -> set[tuple[str, str]]:
    return {(spec.name, spec.split) for spec in (BenchmarkSpec.parse(s, "test") for s in data.eval_datasets)}


def test_every_data_config_is_checked(data_configs):
    assert {"default", "tiny", "zeroshot", "zeroshot_large", "full"} <= set(data_configs)
    assert all(training_splits(data) and eval_splits(data) for data in data_configs.values())


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_no_data_config_evaluates_on_a_split_it_trains_on(data_configs, name):
    shared = training_splits(data_configs[name]) & eval_splits(data_configs[name])
    assert not shared, f"conf/data/{name}.yaml evaluates on the training splits {sorted(shared)}"


def test_the_split_check_catches_evaluation_on_training_rows():
    before_the_fix = {
        "benchmarks": ["emotion:train:24", "go_emotions:train:16"],
        "eval_datasets": ["go_emotions:train:8"],
    }
    data = OmegaConf.create(before_the_fix)  # tiny.yaml's benchmarks and eval sets before the fix
    assert training_splits(data) & eval_splits(data) == {("go_emotions", "train")}
    data = OmegaConf.create(
        {"benchmarks": [{"name": "sst2"}], "nli": ["test:10"], "eval_datasets": ["snli:test", "sst2:train"]}
    )
    assert training_splits(data) & eval_splits(data) == {("snli", "test"), ("sst2", "train")}


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def reads_the_hub(data: DictConfig) -> bool:
    """Whether a data config loads any source from the Hugging Face hub (`source: hub`)."""
    specs = [*(data.get("benchmarks") or []), *(data.get("nli") or []), *(data.get("eval_datasets") or [])]
    return any(not isinstance(spec, str) and spec.get("source") == "hub" for spec in specs)


@cache
def split_texts(name: str, split: str) -> frozenset[str]:
    """Every text of a whole split (a superset of any sample of it), normalised."""
    if name == "snli":
        return frozenset(norm(pair.premise) for pair in read_nli(split, SHARED_DATA))
    return frozenset(norm(row.text) for row in read_benchmark(name, split, SHARED_DATA).rows)


@needs_shared
@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_no_data_config_evaluates_on_a_text_it_trains_on(data_configs, name):
    data = data_configs[name]
    if reads_the_hub(data):  # its rows are not in ../shared/data (tests/test_paper_recipes.py checks it by name)
        pytest.skip(f"conf/data/{name}.yaml reads the Hugging Face hub")
    trained = frozenset().union(*(split_texts(*split) for split in training_splits(data)))
    for spec in data.get("train_files") or []:
        trained |= {norm(ex.text) for ex in read_training_file(spec if isinstance(spec, str) else spec["path"])}
    datamodule = instantiate(data, data_dir=str(SHARED_DATA), processor=None)
    for dataset in datamodule.eval_names:
        texts = [norm(example.text) for example in datamodule.eval_examples(dataset)]
        assert texts, f"{name}: no {dataset} rows"
        leaked = [text for text in texts if text in trained]
        assert not leaked, f"conf/data/{name}.yaml: {len(leaked)} {dataset} eval texts are training texts: {leaked[:2]}"
