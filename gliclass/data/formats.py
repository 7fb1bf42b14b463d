"""The training format: one `Example` per row, read from JSON (a list) or JSONL, validated row by row.

A row is `{"text": str, "all_labels": [str], "true_labels": [str] | {label: score}}` with optional `"prompt": str`
and `"examples": [{"text": str, "labels": [str]}]` (few-shot). Scores are soft targets in [0, 1]; a list of true
labels means score 1.0 each. An empty `true_labels` is allowed (every candidate is a negative). Other keys are
ignored except `id`, kept in `Example.meta` (the batch carries it as `ids`). A malformed row raises `DataFormatError` naming `file:line` (JSONL, 1-based) or `file[index]` (JSON list,
0-based) and the problem; nothing is skipped except blank JSONL lines, which are not rows.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from gliclass.config import SPECIAL_TOKENS

PathLike = str | os.PathLike
T = TypeVar("T")


class DataFormatError(ValueError):
    """A data row (or file) is malformed; the message starts with where it is."""


@dataclass
class Example:
    """One classification example: candidate labels in order, and a target score for each positive."""

    text: str
    all_labels: list[str]
    true_labels: dict[str, float]  # label -> score in [0, 1]; labels absent here score 0
    prompt: str | None = None
    examples: list[dict[str, Any]] | None = None
    source: str = ""  # "file:line" (or a description) so later errors can point at the row
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form provenance (bucket, density, ...)

    def targets(self, labels: Sequence[str] | None = None) -> list[float]:
        """Target scores aligned with `labels` (default: `all_labels`)."""
        return [self.true_labels.get(label, 0.0) for label in (self.all_labels if labels is None else labels)]

    @property
    def positives(self) -> list[str]:
        return [label for label in self.all_labels if self.true_labels.get(label, 0.0) > 0]

    def to_row(self) -> dict[str, Any]:
        """The training-format dict; hard targets are written as a list, soft ones as a dict."""
        hard = all(score == 1.0 for score in self.true_labels.values())
        true: list[str] | dict[str, float] = list(self.true_labels) if hard else dict(self.true_labels)
        row: dict[str, Any] = {"text": self.text, "all_labels": list(self.all_labels), "true_labels": true}
        if self.prompt is not None:
            row["prompt"] = self.prompt
        if self.examples:
            row["examples"] = [dict(e) for e in self.examples]
        return row


# ---------------------------------------------------------------------------------------------- validation
def _fail(where: str, message: str) -> DataFormatError:
    return DataFormatError(f"{where}: {message}")


def check_label_list(value: Any, what: str, where: str, allow_empty: bool = False) -> list[str]:
    """A list of distinct non-empty strings without reserved GLiClass tokens."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _fail(where, f"'{what}' must be a list of strings, got {type(value).__name__}")
    if not value and not allow_empty:
        raise _fail(where, f"'{what}' is empty")
    seen: set[str] = set()
    for label in value:
        if not isinstance(label, str):
            raise _fail(where, f"'{what}' has a non-string label {label!r} ({type(label).__name__})")
        if not label.strip():
            raise _fail(where, f"'{what}' has an empty label")
        if any(token in label for token in SPECIAL_TOKENS):
            raise _fail(where, f"label {label!r} in '{what}' contains a reserved token {list(SPECIAL_TOKENS)}")
        if label in seen:
            raise _fail(where, f"duplicate label {label!r} in '{what}'")
        seen.add(label)
    return list(value)


def check_text_field(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"'{what}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _fail(where, f"'{what}' is empty")
    return check_no_reserved(value, what, where)


def check_no_reserved(value: str, what: str, where: str) -> str:
    """`value` unchanged, or `DataFormatError` at `where` naming the reserved GLiClass token it holds: the processor
    would refuse the row only when a batch draws it, mid-run."""
    for token in SPECIAL_TOKENS:
        if token in value:
            raise _fail(
                where,
                f"'{what}' contains the reserved token {token!r} (GLiClass marks labels, the separator and examples "
                f"with {list(SPECIAL_TOKENS)}); remove or rewrite it",
            )
    return value


def _check_examples(value: Any, where: str) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _fail(where, f"'examples' must be a list of {{'text', 'labels'}} dicts, got {type(value).__name__}")
    out = []
    for i, shot in enumerate(value):
        if not isinstance(shot, Mapping):
            raise _fail(where, f"examples[{i}] must be a dict with 'text' and 'labels', got {type(shot).__name__}")
        if "text" not in shot:
            raise _fail(where, f"examples[{i}] has no 'text'")
        key = "labels" if "labels" in shot else "true_labels"
        if key not in shot:
            raise _fail(where, f"examples[{i}] has no 'labels'")
        text = check_text_field(shot["text"], f"examples[{i}].text", where)
        labels = check_label_list(shot[key], f"examples[{i}].labels", where, allow_empty=True)
        out.append({"text": text, "labels": labels})
    return out


def _check_score(label: str, score: Any, where: str) -> float:
    # bool is an int subclass: True would silently mean 1.0
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise _fail(where, f"score of true label {label!r} must be a number, got {score!r}")
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        raise _fail(where, f"score of true label {label!r} is {score}, outside [0, 1]")
    return float(score)


def parse_row(row: Any, where: str) -> Example:
    """Validate one training-format row; `where` prefixes every error message."""
    if not isinstance(row, Mapping):
        raise _fail(where, f"a row must be a JSON object, got {type(row).__name__}")
    for key in ("text", "all_labels", "true_labels"):
        if key not in row:
            raise _fail(where, f"missing field '{key}' (row has {sorted(row)})")
    text = check_text_field(row["text"], "text", where)
    all_labels = check_label_list(row["all_labels"], "all_labels", where)
    known = set(all_labels)
    raw = row["true_labels"]
    if isinstance(raw, Mapping):
        check_label_list(list(raw), "true_labels", where, allow_empty=True)
        true = {label: _check_score(label, score, where) for label, score in raw.items()}
    else:
        true = dict.fromkeys(check_label_list(raw, "true_labels", where, allow_empty=True), 1.0)
    unknown = [label for label in true if label not in known]
    if unknown:
        raise _fail(where, f"true labels {unknown} are not in all_labels {all_labels}")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise _fail(where, f"'prompt' must be a string, got {type(prompt).__name__}")
    if prompt is not None:
        check_no_reserved(prompt, "prompt", where)
    examples = _check_examples(row.get("examples"), where)
    meta = {"id": row["id"]} if "id" in row else {}  # kept for the PPO feedback reward's look-up
    return Example(text, all_labels, true, prompt=prompt, examples=examples, source=where, meta=meta)


# ---------------------------------------------------------------------------------------------- files
def iter_json_rows(path: PathLike) -> Iterator[tuple[Any, str]]:
    """(row, where) for each row of a JSONL file or JSON list; JSON syntax errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if _is_json_list(path):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: a .json data file must hold a list of rows, got {type(data).__name__}")
        for index, row in enumerate(data):
            yield row, f"{path}[{index}]"
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue  # a blank line (e.g. trailing newline) is not a row
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{where}: invalid JSON ({err.msg})") from err
            yield row, where


def _is_json_list(path: Path) -> bool:
    """.json -> a JSON list, .jsonl -> JSON lines; other names: sniff the first non-space character."""
    if path.suffix == ".json":
        return True
    if path.suffix == ".jsonl":
        return False
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith("[")


def take(items: list[T], limit: int | None, sample_seed: int | str | None) -> list[T]:
    """`limit` items: a seeded random sample in original order (many files are sorted by label), or all."""
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(f"take:{sample_seed}").sample(range(len(items)), limit))
    return [items[i] for i in keep]


def read_training_file(path: PathLike, limit: int | None = None, sample_seed: int | str | None = None) -> list[Example]:
    """Every row of a training-format file, validated; with `limit`, its first rows, or with `sample_seed` a
    seeded random sample of that many rows (the whole file is then read and validated)."""
    head = limit if sample_seed is None else None
    out = [parse_row(row, where) for row, where in islice(iter_json_rows(path), head)]  # islice: no read past it
    return take(out, limit, sample_seed)


def write_training_file(examples: Sequence[Example], path: PathLike) -> None:
    """Write JSONL (or a JSON list when the name ends in .json)."""
    path = Path(path)
    rows = [example.to_row() for example in examples]
    with open(path, "w", encoding="utf-8") as f:
        if path.suffix == ".json":
            json.dump(rows, f, ensure_ascii=False, indent=1)
        else:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
