"""The same benchmarks loaded from the Hugging Face hub through `datasets` (imported lazily, optional).

`HUB_SOURCES` is the one table of where each dataset lives on the hub: id, config, split names, text and label
columns, and the label names, exactly as the local `labels.json` files name them, so a `BenchmarkSplit` from the hub
is interchangeable with a local one. `gliclass.data.fetch` writes the local folder layout from it. Notes: `spam` on
the hub is SetFit/enron_spam (e-mails) whereas the local copy is the SMS Spam Collection; `cr` uses SetFit's split,
the local one a re-made stratified split. The datasets of `LOCAL_ONLY_DATASETS` are not on the hub.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gliclass.data.benchmarks import LOCAL_ONLY_DATASETS, MULTI_LABEL_DATASETS, BenchmarkRow, BenchmarkSplit
from gliclass.data.formats import DataFormatError, check_label_list, take
from gliclass.data.nli import NLI_LABELS

LoadDataset = Callable[..., Any]


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the hub and how its label column(s) become our label names.

    label_kind: "class" (an int column indexing `label_names`, or the ClassLabel names after `rename`),
    "text" (a string column mapped through `label_map`), "multi" (a list-of-int column) or "columns" (one 0/1
    column per label, named by `label_columns`). `local_splits` are the splits of the local folder (what
    `gliclass.data.fetch` writes); `drop_labels` are hub classes left out with their rows (clinc's out-of-scope);
    `parts` are hub datasets concatenated into this one, each mapping its ids to some of `label_names`; `pair` names
    the second text column of premise/hypothesis data (SNLI), whose class -1 means "no gold label".
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
    local_splits: tuple[str, ...] = ("train",)
    drop_labels: tuple[str, ...] = ()
    parts: tuple[HubSource, ...] = ()
    pair: str | None = None


_POLARITY = ("negative", "positive")
_TRAIN_VAL_TEST = ("train", "validation", "test")
_TRAIN_TEST = ("train", "test")
# TweetEval stance: one config per target, classes 0 none, 1 against, 2 favor; ours name the target (SemEval-2016)
_STANCE_TARGETS = {
    "abortion": "legalization of abortion",
    "atheism": "atheism",
    "climate": "climate change is a real concern",
    "feminist": "feminist movement",
    "hillary": "Hillary Clinton",
}
# TREC-50 in the hub's ClassLabel order (ABBR:abb, ABBR:exp, ENTY:animal, ...), named from Li & Roth's definitions
# fmt: off
_TREC_FINE = (
    "abbreviation", "expression abbreviated", "animal", "organ of body", "color", "creative work", "currency name",
    "disease and medicine", "event", "food", "musical instrument", "language", "letter like a-z", "other entity",
    "plant", "product", "religion", "sport", "element and substance", "symbol and sign", "technique and method",
    "equivalent term", "vehicle", "word with a special property", "definition of something",
    "description of something", "manner of an action", "reason", "group or organization of persons",
    "individual person", "title of a person", "description of a person", "city", "country", "mountain",
    "other location", "state", "postcode or other code", "number of something", "date", "distance", "price",
    "order or rank", "other number", "fraction or percentage", "lasting time of something", "speed", "temperature",
    "size, area and volume", "weight",
)
# fmt: on
HUB_SOURCES: dict[str, HubSource] = {
    "sst2": HubSource(
        "SetFit/sst2", label="label_text", label_kind="text", label_names=_POLARITY, local_splits=_TRAIN_VAL_TEST
    ),
    "sst5": HubSource(
        "SetFit/sst5",
        label="label_text",
        label_kind="text",
        label_names=("very negative", "negative", "neutral", "positive", "very positive"),
        local_splits=_TRAIN_VAL_TEST,
    ),
    "rotten_tomatoes": HubSource(
        "cornell-movie-review-data/rotten_tomatoes", label_names=_POLARITY, local_splits=_TRAIN_VAL_TEST
    ),
    "cr": HubSource(
        "SetFit/CR", label="label_text", label_kind="text", label_names=_POLARITY, local_splits=_TRAIN_TEST
    ),
    "imdb": HubSource("stanfordnlp/imdb", label_names=_POLARITY, local_splits=_TRAIN_TEST),
    "ag_news": HubSource(
        "fancyzhx/ag_news", label_names=("World", "Sports", "Business", "Sci/Tech"), local_splits=("test",)
    ),
    "emotion": HubSource(
        "dair-ai/emotion",
        config="split",
        label_names=("sadness", "joy", "love", "anger", "fear", "surprise"),
        local_splits=_TRAIN_VAL_TEST,
    ),
    "spam": HubSource(
        "SetFit/enron_spam",
        label="label_text",
        label_kind="text",
        label_names=("not spam", "spam"),
        label_map={"ham": "not spam"},
        local_splits=_TRAIN_TEST,
    ),
    "banking77": HubSource("PolyAI/banking77", rename="words", local_splits=_TRAIN_TEST),
    "snli": HubSource(
        "stanfordnlp/snli",
        text="premise",
        pair="hypothesis",
        label_names=NLI_LABELS,
        local_splits=("validation", "test"),
    ),
    "clinc150": HubSource("clinc/clinc_oos", config="plus", label="intent", rename="words", drop_labels=("oos",)),
    "subj": HubSource("SetFit/subj", label="label_text", label_kind="text", label_names=("objective", "subjective")),
    "trec_fine": HubSource("CogComp/trec", label="fine_label", label_names=_TREC_FINE),
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
    "tweet_eval_stance": HubSource(
        "cardiffnlp/tweet_eval",
        label_names=tuple(
            f"{stance} {target}"
            for target in _STANCE_TARGETS.values()
            for stance in ("against", "in favor of", "no stance on")
        ),
        parts=tuple(
            HubSource(
                "cardiffnlp/tweet_eval",
                config=f"stance_{config}",
                label_names=(f"no stance on {target}", f"against {target}", f"in favor of {target}"),
            )
            for config, target in _STANCE_TARGETS.items()
        ),
    ),
}


def import_load_dataset() -> LoadDataset:
    """`datasets.load_dataset`, or an ImportError that says what to do."""
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise ImportError(
            "loading benchmarks from the Hugging Face hub needs the `datasets` package: pip install datasets "
            "(or pip install -e '.[hub]'); "
            "without it, use the local files (gliclass.data.read_benchmark / $GLICLASS_DATA_DIR)"
        ) from err
    return load_dataset


def _words(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


def _class_names(dataset: Any, column: str, nested: bool) -> list[str] | None:
    """ClassLabel names of a column (of its items when `nested`) from `dataset.features`, None without them."""
    feature = getattr(dataset, "features", None) or {}
    feature = feature.get(column)
    feature = getattr(feature, "feature", None) if nested else feature
    names = getattr(feature, "names", None)
    return list(names) if names else None


def hub_labels(source: HubSource, dataset: Any) -> list[str]:
    """Every hub class in the hub's order (before `drop_labels`), named as our labels.json files name them."""
    nested = source.label_kind == "multi"
    if source.label_kind == "columns":
        names = list(source.label_columns)
    elif source.label_names is not None:
        names = list(source.label_names)
        hub_names = _class_names(dataset, source.label, nested) if source.label_kind in ("class", "multi") else None
        if hub_names is not None and len(hub_names) != len(names):  # the table would index the wrong names
            raise DataFormatError(
                f"hub:{source.path}: column {source.label!r} has {len(hub_names)} classes {hub_names}, "
                f"but HUB_SOURCES names {len(names)}"
            )
    elif source.label_kind in ("class", "multi"):
        names = _class_names(dataset, source.label, nested)
        if names is None:
            raise ValueError(f"hub column {source.label!r} has no ClassLabel names; give label_names in its HubSource")
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


def hub_source(name: str) -> HubSource:
    """The table entry of `name`, or a KeyError that says whether the dataset is local-only."""
    if name in HUB_SOURCES:
        return HUB_SOURCES[name]
    why = "it is local-only (not on the Hugging Face hub)" if name in LOCAL_ONLY_DATASETS else "unknown dataset"
    raise KeyError(f"no hub source for {name!r}: {why}; on the hub: {sorted(HUB_SOURCES)}")


def load_hub_benchmark(
    name: str,
    split: str = "test",
    limit: int | None = None,
    load_dataset: LoadDataset | None = None,
    sample_seed: int | str | None = None,
) -> BenchmarkSplit:
    """Load one benchmark split from the hub as a `BenchmarkSplit` (same label names as the local files).

    `limit` keeps the first rows, or with `sample_seed` a seeded random sample (as `read_benchmark`)."""
    source = hub_source(name)
    if source.pair is not None:
        raise ValueError(f"{name!r} holds premise/hypothesis pairs: load it with gliclass.data.nli.load_hub_nli")
    load = load_dataset or import_load_dataset()
    head = limit if sample_seed is None else None
    parts: list[BenchmarkSplit] = []
    for part in source.parts or (source,):
        left = None if head is None else head - sum(len(p) for p in parts)
        if left == 0:
            break
        dataset = load(part.path, part.config, split=part.splits.get(split, split))
        parts.append(hub_rows_to_benchmark(name, split, part, dataset, left))
    bench = _concatenate(name, split, source, parts) if source.parts else parts[0]
    if sample_seed is not None:
        bench.rows = take(bench.rows, limit, f"{sample_seed}:{name}:{split}")
    return bench


def _concatenate(name: str, split: str, source: HubSource, parts: list[BenchmarkSplit]) -> BenchmarkSplit:
    """The rows of `parts` under the composite's label list, which must hold every part's labels."""
    labels = check_label_list(list(source.label_names or ()), "labels", f"hub:{source.path} ({name})")
    for part in parts:
        stray = [label for label in part.labels if label not in labels]
        if stray:
            raise DataFormatError(f"hub:{source.path} ({name}): part labels {stray} are not in its label_names")
    multi = any(part.multi_label for part in parts)
    return BenchmarkSplit(name, split, labels, multi, [row for part in parts for row in part.rows])


def hub_rows_to_benchmark(
    name: str, split: str, source: HubSource, dataset: Iterable[Mapping[str, Any]], limit: int | None = None
) -> BenchmarkSplit:
    """Our rows of one hub dataset; rows of a class in `source.drop_labels` are left out, as is that class."""
    names = check_label_list(hub_labels(source, dataset), "labels", f"hub:{source.path}")
    drop = set(source.drop_labels)
    if drop - set(names):
        raise DataFormatError(f"hub:{source.path}: drop_labels {sorted(drop - set(names))} are not hub classes")
    labels = [label for label in names if label not in drop]
    rows = []
    for index, row in enumerate(dataset):
        if limit is not None and len(rows) >= limit:
            break
        where = f"hub:{source.path}/{source.config or 'default'}/{split}[{index}]"
        text = row.get(source.text)
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{where}: column {source.text!r} must be a non-empty string, got {text!r}")
        try:
            row_labels = _row_labels(source, row, names, where)
        except DataFormatError as err:
            message = str(err)
            raise DataFormatError(message if message.startswith(where) else f"{where}: {message}") from err
        if drop.isdisjoint(row_labels):
            rows.append(BenchmarkRow(text, row_labels, where))
    multi = name in MULTI_LABEL_DATASETS or source.label_kind in ("multi", "columns")
    return BenchmarkSplit(name, split, labels, multi, rows)
