"""The zero-shot protocol of the models we report: none of the 10 paper benchmark sets is in their training data,
by name, by text, or by near-duplicate text (paper Table 3: every benchmark is unseen), for every experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_DATA, hydra_conf_dir
from hydra import compose
from hydra.utils import instantiate

import gliclass.resolvers  # noqa: F401  (registers the config resolvers the data configs use)
from gliclass.data.benchmarks import PAPER_BENCHMARKS, read_benchmark
from gliclass.data.overlap import NearDuplicateIndex

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# experiments whose models are not reported zero-shot, with the reason; every other experiment is held to the protocol
NOT_ZERO_SHOT = {
    "minilm_single_label": "single-label training on single-label sources, emotion and snips among them (a demo)",
    "three_stage_tiny": "the test fixture of the three-stage chain, on a few dozen rows of conf/data/tiny",
}
# overrides an experiment needs to compose (recipe_cv: its fold)
NEEDS = {"recipe_cv": ["fold=f0"]}
# the training configs behind every model whose scores the README and experiments/results/ report
REPORTED = {
    "default run": [],
    "default run, uni-encoder": ["arch=uni"],
    "edge_cpu": ["experiment=edge_cpu"],
    "edge_cpu, uni-encoder": ["experiment=edge_cpu", "arch=uni"],
}
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")


def _compose_all() -> dict[str, object]:
    """Every reported config and every stage of every experiment, composed."""
    out = {name: compose(config_name="train", overrides=o) for name, o in REPORTED.items()}
    for name in EXPERIMENTS:
        base = [f"experiment={name}", *NEEDS.get(name, [])]
        cfg = compose(config_name="train", overrides=base)
        out[f"experiment={name}"] = cfg
        for stage, overrides in (cfg.get("stages") or {}).items():
            out[f"experiment={name}, stage {stage}"] = compose(config_name="train", overrides=[*base, *overrides])
    return out


@pytest.fixture(scope="module")
def configs():
    with hydra_conf_dir():
        yield _compose_all()


def named_sources(data) -> list[str]:
    """Every dataset a data config trains on, by name."""
    names = []
    for spec in data.get("benchmarks") or []:
        names.append(spec.split(":")[0] if isinstance(spec, str) else spec["name"])
    names += [str(spec) for spec in data.get("train_files") or []]
    return names


def _exempt(run: str) -> bool:
    return any(run.startswith(f"experiment={name}") for name in NOT_ZERO_SHOT)


def test_every_experiment_is_checked(configs):
    checked = {run.split(",")[0] for run in configs}
    assert {f"experiment={name}" for name in EXPERIMENTS} <= checked
    assert set(NOT_ZERO_SHOT) <= set(EXPERIMENTS), "an exemption names an experiment that does not exist"


@pytest.mark.parametrize("run", [*REPORTED, *(f"experiment={n}" for n in EXPERIMENTS)])
def test_training_configs_name_no_benchmark_set(configs, run):
    runs = [r for r in configs if r == run or r.startswith(f"{run}, stage")]
    for name in runs:
        data = configs[name].data
        sources = named_sources(data)
        assert sources or data.get("nli"), f"{name}: no training source found"
        leaked = [s for s in sources if any(b == s or b in Path(s).parts for b in PAPER_BENCHMARKS)]
        if _exempt(name):
            # not zero-shot, but still never scored on what it trains on
            evaluated = {str(s).split(":")[0] for s in data.get("eval_datasets") or []}
            assert not evaluated & set(sources), f"{name} is scored on sets it trains on"
        else:
            assert not leaked, f"{name} trains on paper benchmark sets {leaked}"
        # the near-duplicate filter is on, and it protects every paper set
        assert data.get("exclude_near_duplicates", True), f"{name} turns the near-duplicate filter off"
        protected = data.get("protected_test_sets")
        assert protected is None or set(PAPER_BENCHMARKS) <= set(protected), f"{name} protects only {protected}"


def test_the_check_catches_a_benchmark_in_the_mix(configs):
    data = configs["default run"].data.copy()
    data.benchmarks = [*data.benchmarks, "banking77:train:10"]
    assert "banking77" in named_sources(data)


@pytest.fixture(scope="module")
def paper_test_index():
    index = NearDuplicateIndex(())
    for name in PAPER_BENCHMARKS:
        for row in read_benchmark(name, "test", SHARED_DATA).rows:
            index.add(row.text)
    return index


def _near_duplicates(configs, run, index):
    datamodule = instantiate(configs[run].data, data_dir=str(SHARED_DATA), processor=None)
    mix = datamodule.build_mix()
    assert len(mix) > 1000
    return [(ex.source, ex.text[:60]) for ex in mix if index.matches(ex.text)], datamodule


@needs_data
def test_no_training_text_is_a_near_duplicate_of_a_benchmark_test_text(configs, paper_test_index):
    """The default mix: subj holds ~400 sst2/sst5 test sentences and uci_imdb_sentences ~70 imdb test reviews'
    sentences (other tokenisation); all are filtered out, counted per source."""
    overlap, datamodule = _near_duplicates(configs, "default run", paper_test_index)
    assert not overlap, f"{len(overlap)} training texts are near-duplicates of benchmark test texts: {overlap[:3]}"
    assert datamodule.near_duplicates_dropped.get("subj/train", 0) >= 283
    assert datamodule.near_duplicates_dropped.get("uci_imdb_sentences/train", 0) >= 23


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("run", [f"experiment={n}" for n in EXPERIMENTS if n not in NOT_ZERO_SHOT])
def test_no_experiment_trains_on_a_near_duplicate(configs, paper_test_index, run):
    if any(
        not isinstance(s, str) and s.get("source") == "hub" for s in configs[run].data.get("benchmarks") or []
    ):  # pragma: no cover - hub mixes need the network
        pytest.skip("a hub data config: needs the network")
    overlap, _ = _near_duplicates(configs, run, paper_test_index)
    assert not overlap, f"{run}: {len(overlap)} near-duplicates of benchmark test texts, e.g. {overlap[:3]}"
