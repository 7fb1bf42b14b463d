"""Benchmark datasets on disk (`<root>/<name>/<split>.jsonl` + `labels.json`) and their conversion to `Example`s.

Rows are `{"text": str, "labels": [str]}`; `labels.json` is the full label list in canonical order. Conversion
either keeps every label of the dataset as a candidate ("all labels", used for evaluation) or samples, per row,
the positives plus a random number of negatives in [min_negatives, max_negatives] (seeded), in shuffled order.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from gliclass.data.formats import DataFormatError, Example, PathLike, check_label_list, iter_json_rows, take
from gliclass.data.sources import HUB_SOURCES

DATA_DIR_ENV = "GLICLASS_DATA_DIR"
# the 10 benchmark sets of paper Table 3: every model we report is scored on their test splits, zero-shot, so no
# training row may be one of their test texts or a near-duplicate of one (gliclass.data.overlap)
PAPER_BENCHMARKS = (
    "sst2", "sst5", "rotten_tomatoes", "cr", "imdb", "ag_news", "emotion", "spam", "banking77", "snips",
)  # fmt: skip
# atis: a few rows hold two intents (../shared/data/MANIFEST.md)
MULTI_LABEL_DATASETS = frozenset({"go_emotions", "sem_eval_2018_ec", "atis"})
NLI_DATASETS = frozenset({"snli"})  # premise/hypothesis rows: read them with gliclass.data.nli
# in ../shared/data but not fetched from the Hugging Face hub, so `gliclass.data.fetch` cannot build them: the first
# six are not on the hub; the second batch (train-only sets added for generality, issue 22) was built from GitHub
# copies (../shared/data/MANIFEST.md names each source) with its own samples and label names, and no hub copy has been
# checked to give the same rows and labels, so none is claimed
LOCAL_ONLY_DATASETS = frozenset(
    {"snips", "mpqa", "symptom2disease", "uci_amazon_sentences", "uci_imdb_sentences", "uci_yelp_sentences"}
    | {
        "bbc_news",
        "hate_speech_offensive",
        "atis",
        "amazon_multi_domain_sentiment",
        "airline_sentiment",
        "airline_complaints",
        "scicite",
        "acl_arc_citation_intent",
        "mag_field_of_study",
        "clickbait",
        "unfair_tos",
    }
)
LABELS_FILE = "labels.json"
FETCH_COMMAND = "python -m gliclass.data.fetch DIR"  # builds this layout from the hub (gliclass/data/fetch.py)


def default_data_root() -> Path:
    """`<repo>/../shared/data`, the layout of this project's checkouts."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def data_root(path: PathLike | None = None) -> Path:
    """Resolve the data directory: explicit `path` > env GLICLASS_DATA_DIR > `<repo>/../shared/data`."""
    if path is not None:
        candidate, origin = Path(path), "the explicit path"
    elif os.environ.get(DATA_DIR_ENV):
        candidate, origin = Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV}"
    else:
        candidate, origin = default_data_root(), f"the default <repo>/../shared/data (${DATA_DIR_ENV} is unset)"
    if not candidate.is_dir():
        raise FileNotFoundError(
            f"data directory {candidate} (from {origin}) does not exist. Without ../shared/data, build the "
            f"benchmark folders from the Hugging Face hub with `{FETCH_COMMAND}` (needs `pip install datasets`) and "
            f"set {DATA_DIR_ENV}=DIR, or pass the path (paths.data_dir=DIR / --data-dir DIR)"
        )
    return candidate


def list_benchmarks(root: PathLike | None = None, include_nli: bool = True) -> dict[str, list[str]]:
    """{dataset name: sorted split names} for every `<root>/<name>/` holding `<split>.jsonl` files."""
    base = data_root(root)
    found = {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        splits = sorted(f.stem for f in folder.glob("*.jsonl"))
        if splits and (include_nli or folder.name not in NLI_DATASETS):
            found[folder.name] = splits
    return found


@dataclass
class BenchmarkRow:
    text: str
    labels: list[str]
    source: str  # file:line


@dataclass
class BenchmarkSplit:
    """One split of a benchmark: its rows, the dataset's full label list and whether it is multi-label."""

    name: str
    split: str
    labels: list[str]
    multi_label: bool
    rows: list[BenchmarkRow]
    # rows left out by `read_benchmark(exclude=...)` (near-duplicates of evaluation rows), before any sample
    excluded: int = 0
    # rows with several true labels left out by `read_benchmark(drop_multi_label_rows=True)`, before any sample
    multi_label_dropped: int = 0

    def __len__(self) -> int:
        return len(self.rows)


def read_labels(name: str, root: PathLike | None = None) -> list[str]:
    path = data_root(root) / name / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: benchmark {name!r} needs its full label list there")
    with open(path, encoding="utf-8") as f:
        try:
            labels = json.load(f)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
    return check_label_list(labels, "labels", str(path))


def read_benchmark(
    name: str,
    split: str = "test",
    root: PathLike | None = None,
    limit: int | None = None,
    sample_seed: int | str | None = None,
    exclude: Callable[[str], bool] | None = None,
    drop_multi_label_rows: bool = False,
) -> BenchmarkSplit:
    """Read `<root>/<name>/<split>.jsonl`, checking every label against labels.json.

    `limit` keeps the first rows, or, with `sample_seed`, a seeded random sample of rows in file order (several
    files are sorted by label: the first 500 rows of imdb/test are all negative). `exclude(text)` True drops a
    row before the limit is applied (so a sample still has `limit` rows), counted in `.excluded`.
    `drop_multi_label_rows` drops every row with more than one true label the same way, counted in
    `.multi_label_dropped`; the split stays `multi_label` when such rows were read (its task is multi-label).
    """
    if name in NLI_DATASETS:
        raise ValueError(f"{name!r} holds premise/hypothesis pairs: read it with gliclass.data.nli.read_nli")
    base = data_root(root)
    path = base / name / f"{split}.jsonl"
    if not path.is_file():
        if not (base / name).is_dir():
            raise FileNotFoundError(f"benchmark {name!r} not found: {base / name} does not exist; {_origin(name)}")
        present = sorted(f.stem for f in (base / name).glob("*.jsonl"))
        raise FileNotFoundError(f"{path} does not exist; {name!r} has splits {present}")
    labels = read_labels(name, root)
    known = set(labels)
    head = limit if sample_seed is None and exclude is None and not drop_multi_label_rows else None
    rows = [_parse_benchmark_row(row, where, known) for row, where in islice(iter_json_rows(path), head)]
    multi = name in MULTI_LABEL_DATASETS or any(len(r.labels) > 1 for r in rows)  # judged on every row read
    multi_dropped = 0
    if drop_multi_label_rows:
        kept = [row for row in rows if len(row.labels) <= 1]
        multi_dropped, rows = len(rows) - len(kept), kept
        if sample_seed is None and exclude is None and limit is not None:
            rows = rows[:limit]
    excluded = 0
    if exclude is not None:
        kept = [row for row in rows if not exclude(row.text)]
        excluded, rows = len(rows) - len(kept), kept
        if sample_seed is None and limit is not None:
            rows = rows[:limit]
    rows = take(rows, limit, f"{sample_seed}:{name}:{split}")
    return BenchmarkSplit(name, split, labels, multi, rows, excluded, multi_dropped)


def _origin(name: str) -> str:
    """Where a missing dataset can come from."""
    if name in HUB_SOURCES:
        return f"`{FETCH_COMMAND} --datasets {name}` builds it from the Hugging Face hub"
    if name in LOCAL_ONLY_DATASETS:
        return f"{name!r} is local-only (not on the Hugging Face hub): only ../shared/data has it"
    return f"{name!r} is neither a hub dataset (gliclass.data.hub.HUB_SOURCES) nor one of ../shared/data"


def _parse_benchmark_row(row: object, where: str, known: set[str]) -> BenchmarkRow:
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    for key in ("text", "labels"):
        if key not in row:
            raise DataFormatError(f"{where}: missing field '{key}' (row has {sorted(row)})")
    text = row["text"]
    if not isinstance(text, str) or not text.strip():
        raise DataFormatError(f"{where}: 'text' must be a non-empty string, got {text!r}")
    labels = check_label_list(row["labels"], "labels", where)
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise DataFormatError(f"{where}: labels {unknown} are not in the dataset's {LABELS_FILE}")
    return BenchmarkRow(text, labels, where)


def to_examples(
    bench: BenchmarkSplit,
    all_labels: bool = False,
    min_negatives: int = 1,
    max_negatives: int | None = None,
    seed: int = 0,
    prompt: str | None = None,
    max_candidates: int | None = None,
    foreign_labels: Sequence[str] = (),
    max_foreign_negatives: int = 0,
) -> list[Example]:
    """Training-format examples: every label as a candidate (`all_labels`), or positives + sampled negatives.

    Sampled candidates: the row's positives, k hard negatives from the dataset's own labels (k uniform in
    [min_negatives, max_negatives]; None: up to the whole label set) and j random negatives from `foreign_labels`
    (other datasets' labels; j uniform in [0, max_foreign_negatives]), at most `max_candidates` in all, shuffled. A
    foreign label that names one of this dataset's labels (case-insensitively) is never a negative.
    """
    if min_negatives < 0 or (max_negatives is not None and max_negatives < min_negatives):
        raise ValueError(f"need 0 <= min_negatives <= max_negatives, got {min_negatives}, {max_negatives}")
    if max_candidates is not None and max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1 (or None), got {max_candidates}")
    if max_foreign_negatives < 0:
        raise ValueError(f"max_foreign_negatives must be >= 0, got {max_foreign_negatives}")
    rng = random.Random(f"{seed}:{bench.name}:{bench.split}")  # str seeds are stable across processes
    own = {label.lower() for label in bench.labels}
    foreign = sorted({label for label in foreign_labels if label.lower() not in own})
    out = []
    for row in bench.rows:
        true = dict.fromkeys(row.labels, 1.0)
        if all_labels:
            candidates = list(bench.labels)
        else:
            candidates = _sample_candidates(
                rng,
                row.labels,
                bench.labels,
                min_negatives,
                max_negatives,
                max_candidates,
                foreign,
                max_foreign_negatives,
            )
        meta = {"dataset": bench.name, "multi_label": bench.multi_label}
        out.append(Example(row.text, candidates, true, prompt=prompt, source=row.source, meta=meta))
    return out


def _sample_candidates(
    rng: random.Random,
    positives: Sequence[str],
    labels: Sequence[str],
    low: int,
    high: int | None,
    max_candidates: int | None = None,
    foreign: Sequence[str] = (),
    max_foreign: int = 0,
) -> list[str]:
    """Positives plus k random negatives, k uniform in [low, high] capped by what the label set (and the candidate
    cap) allows, plus j uniform in [0, max_foreign] negatives from `foreign` within the cap."""
    pos = set(positives)
    negatives = [label for label in labels if label not in pos]
    room = len(negatives) if max_candidates is None else max(max_candidates - len(positives), 0)
    high = len(negatives) if high is None else min(high, len(negatives))
    high = min(high, room)
    low = max(low, 0 if positives else 1)  # a row without positives still needs one candidate
    k = rng.randint(min(low, high), high)
    candidates = list(positives) + rng.sample(negatives, k)
    if max_foreign and foreign:
        extra = [label for label in foreign if label not in pos]
        j = min(rng.randint(0, max_foreign), len(extra), max(room - k, 0))
        candidates += rng.sample(extra, j)
    rng.shuffle(candidates)
    return candidates
