"""Dataset families: datasets that share a source of texts, so that a model that trains on one of them has seen the
texts (or their near-duplicates) of the others. Leave-family-out cross-validation (`experiment=recipe_cv`, the
`fold` group) holds out whole families, so no fold trains on the texts it scores.

How the families were found: every pair of train-only sets of ../shared/data was checked for near-duplicate rows
(`gliclass.data.overlap`; 3,000 rows of each set against every row of the other). The pairs that share texts:
trec / trec_fine (all 5,452 texts), airline_complaints / airline_sentiment (3,944 of 3,948 sampled rows),
sem_eval_2018_ec / tweet_eval_emotion (1,810 of 3,257), tweet_eval_offensive / tweet_eval_hate (63 of 3,972). The
rest follows the source of the texts: one family per corpus (all tweets, reddit comments included with the tweet
emotion sets they are usually trained next to; the sentence sets cut from reviews; the subjectivity corpora;
scholarly text), so that a fold never scores a domain whose close copy it trained on.

The 10 paper benchmark sets are in no family: nothing that we report trains on them.
"""

from __future__ import annotations

from collections.abc import Iterable

FAMILIES: dict[str, tuple[str, ...]] = {
    "questions": ("trec", "trec_fine"),
    "tweets": (
        "tweet_eval_emotion",
        "tweet_eval_hate",
        "tweet_eval_irony",
        "tweet_eval_offensive",
        "tweet_eval_stance",
        "sem_eval_2018_ec",
        "go_emotions",
        "hate_speech_offensive",
    ),
    "review_sentences": (
        "uci_amazon_sentences",
        "uci_imdb_sentences",
        "uci_yelp_sentences",
        "amazon_multi_domain_sentiment",
    ),
    "subjectivity": ("mpqa", "subj"),
    "airline": ("airline_sentiment", "airline_complaints"),
    "assistant_intents": ("clinc150",),
    "flight_intents": ("atis",),
    "encyclopedia": ("dbpedia_14",),
    "news": ("bbc_news",),
    "headlines": ("clickbait",),
    "scholarly": ("mag_field_of_study", "scicite", "acl_arc_citation_intent"),
    "medical": ("symptom2disease",),
    "legal": ("unfair_tos",),
}

FAMILY_OF: dict[str, str] = {name: family for family, names in FAMILIES.items() for name in names}

# Leave-family-out folds: each holds out these families (every one of their sets is scored, none trained on). Five
# folds so that the whole CV fits in about an hour on 2 CPU cores; each mixes task types (topic, intent, sentiment,
# emotion) so that no fold is one kind of task.
FOLDS: dict[str, tuple[str, ...]] = {
    "f0": ("questions", "medical", "legal"),
    "f1": ("tweets",),
    "f2": ("review_sentences", "subjectivity", "airline"),
    "f3": ("assistant_intents", "flight_intents", "headlines"),
    "f4": ("encyclopedia", "news", "scholarly"),
}


def family_of(name: str) -> str:
    """The family of dataset `name`; an unknown dataset is an error (give it a family here first)."""
    try:
        return FAMILY_OF[name]
    except KeyError:
        raise KeyError(
            f"dataset {name!r} has no family in gliclass.data.families.FAMILIES: add it (with the sets it shares "
            f"texts with) before it can train or be held out"
        ) from None


def fold_datasets(fold: str) -> tuple[str, ...]:
    """Every dataset that fold `fold` holds out (and scores)."""
    if fold not in FOLDS:
        raise KeyError(f"unknown fold {fold!r}; the folds are {sorted(FOLDS)}")
    return tuple(name for family in FOLDS[fold] for name in FAMILIES[family])


def held_out_leaks(train: Iterable[str], families: Iterable[str]) -> list[str]:
    """The training datasets that belong to a held-out family (a leak), by name."""
    held = set(families)
    unknown = held - set(FAMILIES)
    if unknown:
        raise KeyError(f"unknown families {sorted(unknown)}; the families are {sorted(FAMILIES)}")
    return [name for name in train if family_of(name) in held]
