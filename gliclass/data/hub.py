"""The same benchmarks loaded from the Hugging Face hub through `datasets` (imported lazily, optional).

`HUB_SOURCES` maps our dataset names to hub ids, configs, splits and label columns, and names labels exactly as
the local `labels.json` files do, so a `BenchmarkSplit` from the hub is interchangeable with a local one. Notes:
`spam` on the hub is SetFit/enron_spam (e-mails) whereas the local copy is the SMS Spam Collection; `cr` uses
SetFit's split, the local one a re-made stratified split. Datasets not listed here (snips, clinc150, mpqa, uci_*,
symptom2disease, ...) are local-only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gliclass.data.benchmarks import MULTI_LABEL_DATASETS, BenchmarkRow, BenchmarkSplit
from gliclass.data.formats import DataFormatError, check_label_list, take

LoadDataset = Callable[..., Any]


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the hub and how its label column(s) become our label names.

    label_kind: "class" (an int column indexing `label_names`, or the ClassLabel names after `rename`),
    "text" (a string column mapped through `label_map`), "multi" (a list-of-int column) or "columns" (one 0/1
    column per label, named by `label_columns`).
    """

    path: str
    config: str | None = None
    text: str = "text"
    label: str = "label"
    label_kind: str = "class"
    label_names: tuple[str, ...] | None = None
    label_columns: tuple[str, ...] = ()
    label_map: Mapping[str, str] = field(default_factory=dict)
    rename: str | None = None  # "words": underscores -> spaces, lower-cased (ClassLabel names)
    splits: Mapping[str, str] = field(default_factory=dict)  # our split name -> hub split name, when they differ


_POLARITY = ("negative", "positive")
HUB_SOURCES: dict[str, HubSource] = {
    "sst2": HubSource("SetFit/sst2", label="label_text", label_kind="text", label_names=_POLARITY),
    "sst5": HubSource(
        "SetFit/sst5",
        label="label_text",
        label_kind="text",
        label_names=("very negative", "negative", "neutral", "positive", "very positive"),
    ),
    "rotten_tomatoes": HubSource("cornell-movie-review-data/rotten_tomatoes", label_names=_POLARITY),
    "cr": HubSource("SetFit/CR", label="label_text", label_kind="text", label_names=_POLARITY),
    "imdb": HubSource("stanfordnlp/imdb", label_names=_POLARITY),
    "ag_news": HubSource("fancyzhx/ag_news", label_names=("World", "Sports", "Business", "Sci/Tech")),
    "emotion": HubSource(
        "dair-ai/emotion", config="split", label_names=("sadness", "joy", "love", "anger", "fear", "surprise")
    ),
    "spam": HubSource(
        "SetFit/enron_spam",
        label="label_text",
        label_kind="text",
        label_names=("not spam", "spam"),
        label_map={"ham": "not spam"},
    ),
    "banking77": HubSource("PolyAI/banking77", rename="words"),
    "subj": HubSource("SetFit/subj", label="label_text", label_kind="text", label_names=("objective", "subjective")),
    "trec": HubSource(
        "CogComp/trec",
        label="coarse_label",
        label_names=(
            "abbreviation",
            "entity",
            "description and abstract concept",
            "human being",
            "location",
            "numeric value",
        ),
    ),
    "dbpedia_14": HubSource(
        "fancyzhx/dbpedia_14",
        text="content",
        label_names=(
            "company",
            "educational institution",
            "artist",
            "athlete",
            "office holder",
            "means of transportation",
            "building",
            "natural place",
            "village",
            "animal",
            "plant",
            "album",
            "film",
            "written work",
        ),
    ),
    "go_emotions": HubSource(
        "google-research-datasets/go_emotions", config="simplified", label="labels", label_kind="multi"
    ),
    "sem_eval_2018_ec": HubSource(
        "SemEvalWorkshop/sem_eval_2018_task_1",
        config="subtask5.english",
        text="Tweet",
        label_kind="columns",
        label_columns=(
            "anger",
            "anticipation",
            "disgust",
            "fear",
            "joy",
            "love",
            "optimism",
            "pessimism",
            "sadness",
            "surprise",
            "trust",
        ),
    ),
    "tweet_eval_emotion": HubSource("cardiffnlp/tweet_eval", config="emotion"),
    "tweet_eval_hate": HubSource(
        "cardiffnlp/tweet_eval", config="hate", label_names=("not hate speech", "hate speech")
    ),
    "tweet_eval_irony": HubSource("cardiffnlp/tweet_eval", config="irony", label_names=("not ironic", "ironic")),
    "tweet_eval_offensive": HubSource(
        "cardiffnlp/tweet_eval", config="offensive", label_names=("not offensive", "offensive")
    ),
}


def import_load_dataset() -> LoadDataset:
    """`datasets.load_dataset`, or an ImportError that says what to do."""
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise ImportError(
            "loading benchmarks from the Hugging Face hub needs the `datasets` package (pip install datasets); "
            "without it, use the local files (gliclass.data.read_benchmark / $GLICLASS_DATA_DIR)"
        ) from err
    return load_dataset


def _words(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


def _feature_names(dataset: Any, column: str, nested: bool) -> list[str]:
    """ClassLabel names of a column (of its items when `nested`), from `dataset.features`."""
    feature = getattr(dataset, "features", {}).get(column)
    feature = getattr(feature, "feature", None) if nested else feature
    names = getattr(feature, "names", None)
    if not names:
        raise ValueError(f"hub column {column!r} has no ClassLabel names; give label_names in its HubSource")
    return list(names)


def hub_labels(source: HubSource, dataset: Any) -> list[str]:
    """The label list in canonical order, named as our labels.json files name them."""
    if source.label_kind == "columns":
        names = list(source.label_columns)
    elif source.label_names is not None:
        names = list(source.label_names)
    elif source.label_kind in ("class", "multi"):
        names = _feature_names(dataset, source.label, nested=source.label_kind == "multi")
    else:
        raise ValueError(f"{source.path}: label_kind={source.label_kind!r} needs label_names")
    if source.rename == "words":
        names = [_words(n) for n in names]
    return [source.label_map.get(n, n) for n in names]


def _row_labels(source: HubSource, row: Mapping[str, Any], labels: list[str], where: str) -> list[str]:
    kind = source.label_kind
    try:
        if kind == "class":
            return [labels[_index(row[source.label], len(labels))]]
        if kind == "multi":
            return [labels[_index(i, len(labels))] for i in row[source.label]]
        if kind == "columns":
            return [labels[i] for i, col in enumerate(source.label_columns) if row[col]]
        if kind == "text":
            name = source.label_map.get(row[source.label], row[source.label])
            if name not in labels:
                raise DataFormatError(f"{where}: label {row[source.label]!r} is not one of {labels}")
            return [name]
    except KeyError as err:
        raise DataFormatError(f"{where}: missing column {err} (row has {sorted(row)})") from err
    raise ValueError(f"unknown label_kind {kind!r}")


def _index(value: Any, size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise DataFormatError(f"label id {value!r} is not in [0, {size})")
    return value


def load_hub_benchmark(
    name: str,
    split: str = "test",
    limit: int | None = None,
    load_dataset: LoadDataset | None = None,
    sample_seed: int | str | None = None,
) -> BenchmarkSplit:
    """Load one benchmark split from the hub as a `BenchmarkSplit` (same label names as the local files).

    `limit` keeps the first rows, or with `sample_seed` a seeded random sample (as `read_benchmark`)."""
    if name not in HUB_SOURCES:
        raise KeyError(f"no hub source for {name!r}; known: {sorted(HUB_SOURCES)}")
    source = HUB_SOURCES[name]
    load = load_dataset or import_load_dataset()
    hub_split = source.splits.get(split, split)
    dataset = load(source.path, source.config, split=hub_split)
    if sample_seed is None:
        return hub_rows_to_benchmark(name, split, source, dataset, limit)
    bench = hub_rows_to_benchmark(name, split, source, dataset)
    bench.rows = take(bench.rows, limit, f"{sample_seed}:{name}:{split}")
    return bench


def hub_rows_to_benchmark(
    name: str, split: str, source: HubSource, dataset: Iterable[Mapping[str, Any]], limit: int | None = None
) -> BenchmarkSplit:
    labels = check_label_list(hub_labels(source, dataset), "labels", f"hub:{source.path}")
    rows = []
    for index, row in enumerate(dataset):
        if limit is not None and len(rows) >= limit:
            break
        where = f"hub:{source.path}/{source.config or 'default'}/{split}[{index}]"
        text = row.get(source.text)
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{where}: column {source.text!r} must be a non-empty string, got {text!r}")
        try:
            row_labels = _row_labels(source, row, labels, where)
        except DataFormatError as err:
            message = str(err)
            raise DataFormatError(message if message.startswith(where) else f"{where}: {message}") from err
        rows.append(BenchmarkRow(text, row_labels, where))
    multi = name in MULTI_LABEL_DATASETS or source.label_kind in ("multi", "columns")
    return BenchmarkSplit(name, split, labels, multi, rows)
