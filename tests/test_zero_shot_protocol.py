"""The zero-shot protocol of the models we report: none of the 10 paper benchmark sets is in their training data,
by name or by text (paper Table 3: every benchmark is unseen)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from gliclass.data.benchmarks import read_benchmark

ROOT = Path(__file__).resolve().parents[1]
PAPER_BENCHMARKS = (
    "sst2", "sst5", "rotten_tomatoes", "cr", "imdb", "ag_news", "emotion", "spam", "banking77", "snips",
)  # fmt: skip
# the training configs behind every model whose scores the README and experiments/results/ report
REPORTED = {
    "default run": [],
    "default run, uni-encoder": ["arch=uni"],
    "edge_cpu": ["experiment=edge_cpu"],
    "edge_cpu, uni-encoder": ["experiment=edge_cpu", "arch=uni"],
}
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")


@pytest.fixture(scope="module")
def configs():
    GlobalHydra.instance().clear()
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        yield {name: compose(config_name="train", overrides=o) for name, o in REPORTED.items()}
    GlobalHydra.instance().clear()


def named_sources(data) -> list[str]:
    """Every dataset a data config trains on, by name."""
    names = []
    for spec in data.get("benchmarks") or []:
        names.append(spec.split(":")[0] if isinstance(spec, str) else spec["name"])
    names += [str(spec) for spec in data.get("train_files") or []]
    return names


@pytest.mark.parametrize("run", list(REPORTED))
def test_reported_training_configs_name_no_benchmark_set(configs, run):
    data = configs[run].data
    sources = named_sources(data)
    assert sources, f"{run}: no training source found"
    leaked = [s for s in sources if any(b == s or b in Path(s).parts for b in PAPER_BENCHMARKS)]
    assert not leaked, f"{run} trains on paper benchmark sets {leaked}"


def test_the_check_catches_a_benchmark_in_the_mix(configs):
    data = configs["default run"].data.copy()
    data.benchmarks = [*data.benchmarks, "banking77:train:10"]
    assert "banking77" in named_sources(data)


@needs_data
def test_no_training_text_is_a_benchmark_test_text(configs):
    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    test_texts = {
        norm(row.text): name for name in PAPER_BENCHMARKS for row in read_benchmark(name, "test", SHARED_DATA).rows
    }
    for run in ("default run", "edge_cpu"):  # the uni-encoder variants share these data configs
        data = configs[run].data
        datamodule = instantiate(data, data_dir=str(SHARED_DATA), processor=None)
        mix = datamodule.build_mix()
        assert len(mix) > 1000
        overlap = [(ex.source, test_texts[norm(ex.text)]) for ex in mix if norm(ex.text) in test_texts]
        assert not overlap, f"{run}: {len(overlap)} training texts are benchmark test texts, e.g. {overlap[:3]}"
