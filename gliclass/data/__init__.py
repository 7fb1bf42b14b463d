"""Data: the training format, benchmarks (local and hub), NLI, the pattern stream, datasets and the DataModule.

`GLiClassDataModule` is imported lazily so that `import gliclass.data` does not pull in Lightning.
"""

from __future__ import annotations

from typing import Any

from gliclass.data.benchmarks import (
    DATA_DIR_ENV,
    MULTI_LABEL_DATASETS,
    BenchmarkRow,
    BenchmarkSplit,
    data_root,
    list_benchmarks,
    read_benchmark,
    read_labels,
    to_examples,
)
from gliclass.data.dataset import GLiClassCollator, GLiClassDataset
from gliclass.data.formats import DataFormatError, Example, parse_row, read_training_file, write_training_file
from gliclass.data.hub import HUB_SOURCES, HubSource, load_hub_benchmark
from gliclass.data.nli import NLI_LABELS, NLI_TEMPLATE, NLIPair, load_hub_nli, nli_examples, read_nli
from gliclass.data.patterns import LENGTH_BUCKETS, bucket_of, fits_whole, pattern_stream, word_count

__all__ = [
    "DATA_DIR_ENV",
    "HUB_SOURCES",
    "LENGTH_BUCKETS",
    "MULTI_LABEL_DATASETS",
    "NLI_LABELS",
    "NLI_TEMPLATE",
    "BenchmarkRow",
    "BenchmarkSplit",
    "DataFormatError",
    "Example",
    "GLiClassCollator",
    "GLiClassDataModule",
    "GLiClassDataset",
    "HubSource",
    "NLIPair",
    "bucket_of",
    "data_root",
    "fits_whole",
    "list_benchmarks",
    "load_hub_benchmark",
    "load_hub_nli",
    "nli_examples",
    "parse_row",
    "pattern_stream",
    "read_benchmark",
    "read_labels",
    "read_nli",
    "read_training_file",
    "to_examples",
    "word_count",
    "write_training_file",
]


def __getattr__(name: str) -> Any:
    if name == "GLiClassDataModule":
        from gliclass.data.datamodule import GLiClassDataModule

        return GLiClassDataModule
    raise AttributeError(f"module 'gliclass.data' has no attribute {name!r}")
