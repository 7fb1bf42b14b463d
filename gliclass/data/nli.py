"""NLI pairs (`{"premise", "hypothesis", "label"}`, labels entailment/neutral/contradiction) as GLiClass examples.

Formulation "hypothesis" (default), the zero-shot reading of NLI that GLiClass is built for: hypotheses are
candidate labels of their premise. Pairs are grouped by premise (SNLI has ~3 hypotheses per premise, one per
relation); each premise gives one example with

    text = premise, all_labels = its hypotheses (first-seen order), true_labels = {entailed hypothesis: 1.0}

so neutral and contradiction hypotheses are negatives. A hypothesis seen several times under one premise is one
label whose score is the fraction of its pairs labelled entailment (a soft target when they disagree). Optionally
`extra_negatives` hypotheses of other premises are added as easy negatives (seeded). A premise with no entailed
hypothesis is kept: every candidate is a negative.

Formulation "relation": one example per pair, single-label over the three relation names, with
    text = NLI_TEMPLATE.format(premise=..., hypothesis=...) = "{premise}\nHypothesis: {hypothesis}"
    all_labels = ["entailment", "neutral", "contradiction"], true_labels = [label].
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from gliclass.data.benchmarks import data_root
from gliclass.data.formats import DataFormatError, Example, PathLike, iter_json_rows
from gliclass.data.sources import NLI_LABELS, import_load_dataset

NLI_TEMPLATE = "{premise}\nHypothesis: {hypothesis}"
HUB_NLI = ("stanfordnlp/snli", None)  # hub labels: 0 entailment, 1 neutral, 2 contradiction, -1 no gold label


@dataclass
class NLIPair:
    premise: str
    hypothesis: str
    label: str
    source: str


def parse_nli_row(row: Any, where: str) -> NLIPair:
    if not isinstance(row, Mapping):
        raise DataFormatError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    for key in ("premise", "hypothesis", "label"):
        if key not in row:
            raise DataFormatError(f"{where}: missing field '{key}' (row has {sorted(row)})")
        if not isinstance(row[key], str) or not row[key].strip():
            raise DataFormatError(f"{where}: '{key}' must be a non-empty string, got {row[key]!r}")
    if row["label"] not in NLI_LABELS:
        raise DataFormatError(f"{where}: label {row['label']!r} is not one of {list(NLI_LABELS)}")
    return NLIPair(row["premise"], row["hypothesis"], row["label"], where)


def read_nli(
    split: str = "validation", root: PathLike | None = None, name: str = "snli", limit: int | None = None
) -> list[NLIPair]:
    """Pairs of `<root>/<name>/<split>.jsonl` (the first `limit` rows if given)."""
    path = data_root(root) / name / f"{split}.jsonl"
    pairs = []
    for row, where in islice(iter_json_rows(path), limit):  # islice stops before reading past the limit
        pairs.append(parse_nli_row(row, where))
    return pairs


def load_hub_nli(split: str = "validation", limit: int | None = None, load_dataset: Any = None) -> list[NLIPair]:
    """SNLI pairs from the hub; pairs without a gold label (-1) are dropped, as every SNLI user does."""
    load = load_dataset or import_load_dataset()
    pairs = []
    for index, row in enumerate(load(HUB_NLI[0], HUB_NLI[1], split=split)):
        if limit is not None and len(pairs) >= limit:
            break
        if row["label"] == -1:
            continue  # documented: no annotator majority
        label = NLI_LABELS[row["label"]]
        pairs.append(parse_nli_row({**row, "label": label}, f"hub:{HUB_NLI[0]}/{split}[{index}]"))
    return pairs


def nli_examples(
    pairs: Iterable[NLIPair], formulation: str = "hypothesis", extra_negatives: int = 0, seed: int = 0
) -> list[Example]:
    """Classification examples from NLI pairs (see the module docstring for both formulations)."""
    if formulation == "relation":
        return [
            Example(
                NLI_TEMPLATE.format(premise=p.premise, hypothesis=p.hypothesis),
                list(NLI_LABELS),
                {p.label: 1.0},
                source=p.source,
                meta={"dataset": "nli"},
            )
            for p in pairs
        ]
    if formulation != "hypothesis":
        raise ValueError(f"formulation={formulation!r}: choose 'hypothesis' or 'relation'")
    groups: dict[str, dict[str, list[NLIPair]]] = {}
    for pair in pairs:
        groups.setdefault(pair.premise, {}).setdefault(pair.hypothesis, []).append(pair)
    pool = _hypothesis_pool(groups) if extra_negatives else []
    rng = random.Random(f"nli:{seed}")
    out = []
    for premise, hyps in groups.items():
        labels = list(hyps)
        true = {}
        for hypothesis, group in hyps.items():
            score = sum(p.label == "entailment" for p in group) / len(group)
            if score > 0:
                true[hypothesis] = score
        if extra_negatives:
            labels += _other_hypotheses(rng, pool, set(labels), extra_negatives)
            rng.shuffle(labels)
        source = next(iter(hyps.values()))[0].source
        out.append(Example(premise, labels, true, source=source, meta={"dataset": "nli"}))
    return out


def _hypothesis_pool(groups: Mapping[str, Mapping[str, Sequence[NLIPair]]]) -> list[str]:
    return [h for hyps in groups.values() for h in hyps]


def _other_hypotheses(rng: random.Random, pool: Sequence[str], taken: set[str], k: int) -> list[str]:
    """Up to k distinct hypotheses of other premises (a few tries; the pool is large)."""
    chosen: list[str] = []
    for _ in range(4 * k):
        if len(chosen) == k:
            break
        h = pool[rng.randrange(len(pool))]
        if h not in taken:
            taken.add(h)
            chosen.append(h)
    return chosen
