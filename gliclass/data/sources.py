"""Where each benchmark lives on the Hugging Face hub: `HUB_SOURCES`, and `datasets.load_dataset` (imported lazily).

`HUB_SOURCES` is the one table of where each dataset lives on the hub: id, config, split names, text and label
columns, and the label names, exactly as the local `labels.json` files name them, so a `BenchmarkSplit` from the hub
(`gliclass.data.hub`) is interchangeable with a local one. `gliclass.data.fetch` writes the local folder layout from
it. A leaf of `gliclass.data` (standard library only): `benchmarks`, `nli` and `hub` all read it, so none of them
needs to import another back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

NLI_LABELS = ("entailment", "neutral", "contradiction")  # SNLI's hub class order: 0, 1, 2 (-1: no gold label)

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
