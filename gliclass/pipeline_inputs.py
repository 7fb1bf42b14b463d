"""Validation and normalisation of the pipeline's per-text arguments (labels, thresholds, prompts, examples)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"threshold must be a number in [0, 1], got {type(value).__name__}: {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be in [0, 1], got {value!r}")
    return float(value)


def per_text(value: Any, n: int, name: str, default: Any) -> list[Any]:
    if value is None:
        return [default] * n
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"got {n} texts but {len(value)} values of {name} (give one value, or one per text)")
    return [default if item is None else item for item in value]


def per_text_examples(examples: Any, n: int) -> list[list[Mapping[str, Any]] | None]:
    if examples is None:
        return [None] * n
    if isinstance(examples, str | Mapping) or not isinstance(examples, Sequence):
        raise TypeError(
            f"examples must be a list of {{'text', 'labels'}} dicts (or one list per text), got {examples!r}"
        )
    if all(isinstance(example, Mapping) for example in examples):
        return [list(examples) or None] * n
    if len(examples) != n:
        raise ValueError(f"got {n} texts but {len(examples)} example lists")
    for i, shots in enumerate(examples):
        if shots is not None and (isinstance(shots, str | Mapping) or not isinstance(shots, Sequence)):
            raise TypeError(f"examples of text {i} must be a list of dicts or None, got {type(shots).__name__}")
    return [list(shots) if shots else None for shots in examples]


def is_per_text(labels: Any) -> bool:
    """A list whose items are lists or dicts holds one label set per text."""
    if isinstance(labels, str | Mapping) or not isinstance(labels, Sequence) or not labels:
        return False
    # the str test first: it is a plain type check, the Mapping/Sequence ones are slow ABC checks (hot per call)
    kinds = {not isinstance(item, str) and isinstance(item, Mapping | Sequence) for item in labels}
    if kinds == {True, False}:
        raise TypeError("labels mixes strings and lists: give one list of str, or one list per text")
    return kinds == {True}


def flatten_labels(labels: Any, separator: str, prefix: str = "") -> list[str]:
    """A hierarchical dict -> "parent{sep}child" names (depth-first, in input order); lists pass through."""
    join = (lambda name: f"{prefix}{separator}{name}") if prefix else (lambda name: name)
    if isinstance(labels, Mapping):
        if not labels:
            raise ValueError(f"the label dict{' under ' + repr(prefix) if prefix else ''} is empty")
        flat = []
        for key, value in labels.items():
            if not isinstance(key, str):
                raise TypeError(f"label dict keys must be str, got {type(key).__name__}: {key!r}")
            flat.extend(flatten_labels(value, separator, join(key)))
        return flat
    if isinstance(labels, str):
        return [join(labels)] if prefix else labels  # a bare str is rejected by check_labels
    if not isinstance(labels, Sequence):
        raise TypeError(f"labels must be a list of str, got {type(labels).__name__}")
    if prefix and not labels:
        raise ValueError(f"the label list under {prefix!r} is empty")
    return [join(label) if isinstance(label, str) else label for label in labels]
