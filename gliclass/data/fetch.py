"""Build the benchmark folders of ../shared/data from the Hugging Face hub, for a machine without that folder.

    pip install datasets                                    # or: pip install -e ".[hub]"
    python -m gliclass.data.fetch DIR                       # every dataset on the hub
    python -m gliclass.data.fetch DIR --datasets sst2 snli  # some of them
    GLICLASS_DATA_DIR=DIR python run.py ...

It writes the local layout: `DIR/<name>/<split>.jsonl`, rows `{"text", "labels": [names]}` (snli:
`{"premise", "hypothesis", "label"}`), and `DIR/<name>/labels.json`, the full label list, for the splits the local
folder has. Where each dataset lives on the hub (id, config, split) and how its columns and class ids become our
label names is the one table `gliclass.data.hub.HUB_SOURCES`. As in the local files, whitespace in texts is collapsed
to single spaces; rows without a label (sem_eval_2018_ec tweets with no emotion) and SNLI pairs without a gold
label are dropped. Each file is written aside and then renamed over the old one, so an interrupted fetch leaves no
half file. `DIR/FETCHED.json` records, per dataset, the hub source, the rows of each split and the date.

The rows are the hub's, not those of ../shared/data: full splits where the local files hold samples (imdb,
go_emotions, dbpedia_14), SetFit's split of cr and SetFit/subj's train split, the Enron e-mails of the paper
(SetFit/enron_spam) where the local spam set is the SMS Spam Collection, and no removal of texts that also occur in
a test set; banking77 and clinc150 list their labels in the hub's order. The datasets of
`benchmarks.LOCAL_ONLY_DATASETS` are not on the hub and cannot be fetched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gliclass.data.benchmarks import DATA_DIR_ENV, LABELS_FILE, LOCAL_ONLY_DATASETS
from gliclass.data.formats import DataFormatError, PathLike, check_label_list
from gliclass.data.hub import HUB_SOURCES, HubSource, LoadDataset, import_load_dataset, load_hub_benchmark
from gliclass.data.nli import parse_nli_row

RECORD_FILE = "FETCHED.json"
NO_GOLD_LABEL = -1  # SNLI's class for pairs without an annotator majority

Rows = list[dict[str, Any]]


def check_names(names: Sequence[str] | None) -> list[str]:
    """The datasets to fetch (every hub dataset when None), or a ValueError naming each unknown or local-only one."""
    if names is None:
        return list(HUB_SOURCES)
    local = [name for name in names if name in LOCAL_ONLY_DATASETS]
    unknown = [name for name in names if name not in HUB_SOURCES and name not in LOCAL_ONLY_DATASETS]
    problems = [f"unknown dataset(s) {unknown}"] if unknown else []
    if local:
        problems.append(f"{local} local-only (not on the Hugging Face hub; only ../shared/data has them)")
    if problems:
        raise ValueError(f"cannot fetch {'; '.join(problems)}. On the hub: {', '.join(HUB_SOURCES)}")
    return list(dict.fromkeys(names))


def fetch(root: PathLike, names: Sequence[str] | None = None, load_dataset: LoadDataset | None = None) -> dict:
    """Write `root/<name>/` for each dataset of `names` (default: all of HUB_SOURCES) and return the fetch record.

    `load_dataset` is `datasets.load_dataset` (imported lazily) or a stand-in with its signature."""
    names = check_names(names)
    load = load_dataset or import_load_dataset()  # before any folder is made
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    record_path = root / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"datasets": {}}
    for name in names:
        source = HUB_SOURCES[name]
        print(f"fetching {name} from {', '.join(_hub_ids(source))}", file=sys.stderr)
        labels, splits = (_pair_splits if source.pair else _benchmark_splits)(name, source, load)
        folder = root / name
        folder.mkdir(exist_ok=True)
        for split, (rows, _) in splits.items():
            _replace(folder / f"{split}.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        _replace(folder / LABELS_FILE, json.dumps(labels, indent=1, ensure_ascii=False) + "\n")
        record["datasets"][name] = {
            "hub": _hub_ids(source),
            "splits": {
                split: {"hub_split": source.splits.get(split, split), "rows": len(rows), "dropped": dropped}
                for split, (rows, dropped) in splits.items()
            },
            "labels": len(labels),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _replace(record_path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def _hub_ids(source: HubSource) -> list[str]:
    return [part.path + (f":{part.config}" if part.config else "") for part in source.parts or (source,)]


def _collapse(text: Any) -> Any:
    return " ".join(text.split()) if isinstance(text, str) else text


def _benchmark_splits(name: str, source: HubSource, load: LoadDataset) -> tuple[list[str], dict[str, Any]]:
    """{split: (rows, rows dropped for having no label)} through the hub mapping, and the label list."""
    labels: list[str] | None = None
    splits = {}
    for split in source.local_splits:
        bench = load_hub_benchmark(name, split, load_dataset=load)
        if labels is not None and bench.labels != labels:
            raise DataFormatError(f"{name}: split {split!r} has labels {bench.labels}, an earlier split {labels}")
        labels = bench.labels
        rows = [{"text": _collapse(row.text), "labels": row.labels} for row in bench.rows if row.labels]
        splits[split] = (_nonempty(rows, name, split), len(bench.rows) - len(rows))
    assert labels is not None  # every source has a local split
    return labels, splits


def _pair_splits(name: str, source: HubSource, load: LoadDataset) -> tuple[list[str], dict[str, Any]]:
    """Premise/hypothesis rows with the label's name; pairs without a gold label are counted as dropped."""
    labels = check_label_list(list(source.label_names or ()), "labels", f"hub:{source.path}")
    splits = {}
    for split in source.local_splits:
        rows, dropped = [], 0
        for index, row in enumerate(load(source.path, source.config, split=source.splits.get(split, split))):
            where = f"hub:{source.path}/{source.config or 'default'}/{split}[{index}]"
            value = row.get(source.label)
            if value == NO_GOLD_LABEL:
                dropped += 1
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(labels):
                raise DataFormatError(f"{where}: label id {value!r} is not in [0, {len(labels)})")
            pair = {"premise": _collapse(row.get(source.text)), "hypothesis": _collapse(row.get(source.pair))}
            parse_nli_row({**pair, "label": labels[value]}, where)  # the checks read_nli makes
            rows.append({**pair, "label": labels[value]})
        splits[split] = (_nonempty(rows, name, split), dropped)
    return labels, splits


def _nonempty(rows: Rows, name: str, split: str) -> Rows:
    if not rows:
        raise DataFormatError(f"{name}: the hub's {split!r} split gave no labelled rows")
    return rows


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` whole: aside first, then renamed over it."""
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    os.replace(part, path)


def main(argv: Sequence[str] | None = None) -> dict:
    local_only = ", ".join(sorted(LOCAL_ONLY_DATASETS))
    parser = argparse.ArgumentParser(
        prog="python -m gliclass.data.fetch",
        description=__doc__.splitlines()[0],
        epilog=f"On the hub: {', '.join(HUB_SOURCES)}. Local-only (cannot be fetched): {local_only}.",
    )
    parser.add_argument("dir", type=Path, help=f"folder to write; then set {DATA_DIR_ENV}=DIR")
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help="only these (default: every hub dataset)")
    args = parser.parse_args(argv)
    try:
        record = fetch(args.dir, args.datasets)
    except (ValueError, ImportError) as err:  # unknown names, a missing `datasets`, rows that do not map
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {len(record['datasets'])} datasets to {args.dir}; use them with {DATA_DIR_ENV}={args.dir.resolve()}")
    return record


if __name__ == "__main__":
    main()
