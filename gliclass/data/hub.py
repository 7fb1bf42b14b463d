"""The same benchmarks loaded from the Hugging Face hub through `datasets` (imported lazily, optional).

`HUB_SOURCES` (`gliclass.data.sources`) is the one table of where each dataset lives on the hub: id, config, split
names, text and label columns, and the label names, exactly as the local `labels.json` files name them, so a
`BenchmarkSplit` from the hub is interchangeable with a local one. `gliclass.data.fetch` writes the local folder layout
from it. Notes: `spam` on the hub is SetFit/enron_spam (e-mails) whereas the local copy is the SMS Spam Collection;
`cr` uses SetFit's split, the local one a re-made stratified split. The datasets of `LOCAL_ONLY_DATASETS` are not on the hub.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from gliclass.data.benchmarks import LOCAL_ONLY_DATASETS, MULTI_LABEL_DATASETS, BenchmarkRow, BenchmarkSplit
from gliclass.data.formats import DataFormatError, check_label_list, take

# the table and the `datasets` import live in gliclass.data.sources (importable from here, as before)
from gliclass.data.sources import HUB_SOURCES, HubSource, LoadDataset, import_load_dataset

__all__ = [
    "HUB_SOURCES",
    "HubSource",
    "LoadDataset",
    "hub_labels",
    "hub_rows_to_benchmark",
    "hub_source",
    "import_load_dataset",
    "load_hub_benchmark",
]


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
