"""Markdown tables (the paper's Table 3 layout: one row per dataset, one column per system, AVERAGE last) and JSON."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers to fixed decimals, None/NaN to an em dash, everything else with str()."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A GitHub Markdown table; numeric columns are right-aligned."""
    numeric = [all(isinstance(row[j], int | float) or row[j] is None for row in rows) for j in range(len(headers))]
    align = ["---:" if is_num and rows else "---" for is_num in numeric]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(fmt(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def accuracy_table(datasets: Sequence[Mapping[str, Any]], systems: Sequence[str]) -> str:
    """Macro-F1 per dataset and system, then ECE per system; AVERAGE rows over all and over test splits only.

    `datasets`: dicts with name, split, n, multi_label and results {system: {"macro_f1", "ece"}}.
    """
    headers = ["Dataset", "split", "n", *systems, *(f"ECE {s}" for s in systems)]

    def cell(entry: Mapping[str, Any], system: str, key: str) -> float | None:
        return entry["results"].get(system, {}).get(key)

    rows: list[list[Any]] = []
    for entry in datasets:
        name = entry["name"] + (" (multi-label)" if entry["multi_label"] else "")
        rows.append(
            [
                name,
                entry["split"],
                entry["n"],
                *(cell(entry, s, "macro_f1") for s in systems),
                *(cell(entry, s, "ece") for s in systems),
            ]
        )
    for title, subset in (
        ("AVERAGE", datasets),
        ("AVERAGE (test splits)", [d for d in datasets if d["split"] == "test"]),
    ):
        if subset and (title == "AVERAGE" or len(subset) < len(datasets)):
            rows.append(
                [
                    title,
                    "",
                    sum(d["n"] for d in subset),
                    *(mean([cell(d, s, "macro_f1") for d in subset]) for s in systems),
                    *(mean([cell(d, s, "ece") for d in subset]) for s in systems),
                ]
            )
    return markdown_table(headers, rows)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def write_text(text: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def publish(result: Mapping[str, Any], out: str | os.PathLike, name: str, render: Callable[..., str]) -> str:
    """Write `<out>/<name>.json` and the rendered `<out>/<name>.md`, print the Markdown and return it."""
    out = Path(out)
    write_json(result, out / f"{name}.json")
    text = render(result)
    write_text(text, out / f"{name}.md")
    print(text)
    return text
