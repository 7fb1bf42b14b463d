"""`python -m gliclass.data.fetch DIR`: the ../shared/data layout from the hub (here a stub `load_dataset`), and
the errors that point a user without ../shared/data to it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from gliclass.data import benchmarks as benchmarks_module
from gliclass.data import fetch as fetch_module
from gliclass.data.benchmarks import LOCAL_ONLY_DATASETS, MULTI_LABEL_DATASETS, data_root, read_benchmark, read_labels
from gliclass.data.fetch import RECORD_FILE, fetch
from gliclass.data.formats import DataFormatError
from gliclass.data.hub import HUB_SOURCES, load_hub_benchmark
from gliclass.data.nli import HUB_NLI, read_nli

# the folders and split files of ../shared/data (its MANIFEST.md), written down so the test does not need them
LOCAL_LAYOUT = {
    "sst2": {"train", "validation", "test"},
    "sst5": {"train", "validation", "test"},
    "rotten_tomatoes": {"train", "validation", "test"},
    "cr": {"train", "test"},
    "imdb": {"train", "test"},
    "ag_news": {"test"},
    "emotion": {"train", "validation", "test"},
    "spam": {"train", "test"},
    "banking77": {"train", "test"},
    "snips": {"train", "validation", "test"},
    "snli": {"validation", "test"},
    **{
        name: {"train"}
        for name in (
            "go_emotions",
            "clinc150",
            "trec",
            "trec_fine",
            "tweet_eval_emotion",
            "tweet_eval_hate",
            "tweet_eval_irony",
            "tweet_eval_offensive",
            "tweet_eval_stance",
            "dbpedia_14",
            "subj",
            "mpqa",
            "sem_eval_2018_ec",
            "symptom2disease",
            "uci_amazon_sentences",
            "uci_yelp_sentences",
            "uci_imdb_sentences",
        )
    },
}


class Feature:
    """What `datasets` features expose: ClassLabel `names`, a Sequence's item `feature`."""

    def __init__(self, names=None, feature=None):
        self.names, self.feature = names, feature


class HubDataset(list):
    def __init__(self, rows, features=None):
        super().__init__(rows)
        self.features = features or {}


class StubHub:
    """A `load_dataset` stand-in serving fixed datasets by (path, config, split); records its calls."""

    def __init__(self, datasets):
        self.datasets, self.calls = datasets, []

    def __call__(self, path, config=None, split=None):
        self.calls.append((path, config, split))
        if (path, config, split) not in self.datasets:
            raise AssertionError(f"unexpected hub request {(path, config, split)}")
        return self.datasets[path, config, split]


def _stance(config: str, text: str, label: int) -> HubDataset:
    return HubDataset([{"text": f"{config}: {text}", "label": label}])


@pytest.fixture
def stub() -> StubHub:
    emotions = Feature(feature=Feature(["joy", "anger", "neutral"]))
    sem_cols = HUB_SOURCES["sem_eval_2018_ec"].label_columns
    datasets = {
        ("SetFit/sst2", None, split): HubDataset(
            [
                {"text": f"  a  fine\tfilm ({split})\n", "label": 1, "label_text": "positive"},
                {"text": "dull", "label": 0, "label_text": "negative"},
            ]
        )
        for split in ("train", "validation", "test")
    }
    datasets |= {
        ("PolyAI/banking77", None, split): HubDataset(
            [{"text": "where is my card", "label": 1}, {"text": "card stolen", "label": 0}],
            {"label": Feature(["Lost_or_stolen_card", "card_arrival"])},
        )
        for split in ("train", "test")
    }
    datasets[("google-research-datasets/go_emotions", "simplified", "train")] = HubDataset(
        [{"text": "yay but grr", "labels": [0, 1]}, {"text": "ok", "labels": [2]}], {"labels": emotions}
    )
    datasets[("SemEvalWorkshop/sem_eval_2018_task_1", "subtask5.english", "train")] = HubDataset(
        [
            {"Tweet": "wow", **{c: c in ("joy", "surprise") for c in sem_cols}},
            {"Tweet": "meh", **{c: False for c in sem_cols}},  # no emotion: dropped, as in the local file
        ]
    )
    datasets[("clinc/clinc_oos", "plus", "train")] = HubDataset(
        [{"text": "book a table", "intent": 0}, {"text": "what is love", "intent": 2}, {"text": "pay", "intent": 1}],
        {"intent": Feature(["restaurant_reservation", "pay_bill", "oos"])},
    )
    datasets |= {
        ("cardiffnlp/tweet_eval", f"stance_{config}", "train"): _stance(config, "hm", label)
        for config, label in (("abortion", 1), ("atheism", 2), ("climate", 0), ("feminist", 1), ("hillary", 2))
    }
    datasets |= {
        ("stanfordnlp/snli", None, split): HubDataset(
            [
                {"premise": "A  dog runs.", "hypothesis": "An animal moves.", "label": 0},
                {"premise": "A dog runs.", "hypothesis": "A cat sleeps.", "label": 2},
                {"premise": "A dog runs.", "hypothesis": "It is sunny.", "label": -1},  # no gold label: dropped
            ]
        )
        for split in ("validation", "test")
    }
    return StubHub(datasets)


FETCHED = ["sst2", "banking77", "go_emotions", "sem_eval_2018_ec", "clinc150", "tweet_eval_stance", "snli"]


def test_fetch_writes_the_local_layout(tmp_path, stub):
    root = tmp_path / "data"
    record = fetch(root, FETCHED, load_dataset=stub)

    assert sorted(p.name for p in root.iterdir()) == sorted([*FETCHED, RECORD_FILE])
    for name in FETCHED:
        assert {p.name for p in (root / name).iterdir()} == {f"{s}.jsonl" for s in LOCAL_LAYOUT[name]} | {"labels.json"}
    # text labels, whitespace collapsed as in the local files; every split of the local layout
    sst2 = read_benchmark("sst2", "validation", root)
    assert [(r.text, r.labels) for r in sst2.rows] == [
        ("a fine film (validation)", ["positive"]),
        ("dull", ["negative"]),
    ]
    assert read_labels("sst2", root) == ["negative", "positive"]
    # integer class ids -> ClassLabel names, underscores to spaces and lower-cased; labels.json in the hub's order
    assert read_labels("banking77", root) == ["lost or stolen card", "card arrival"]
    assert [r.labels for r in read_benchmark("banking77", "test", root).rows] == [
        ["card arrival"],
        ["lost or stolen card"],
    ]
    # multi-label rows keep every label; a row without any label is dropped and counted
    go = read_benchmark("go_emotions", "train", root)
    assert go.multi_label and [r.labels for r in go.rows] == [["joy", "anger"], ["neutral"]]
    sem = read_benchmark("sem_eval_2018_ec", "train", root)
    assert [(r.text, r.labels) for r in sem.rows] == [("wow", ["joy", "surprise"])]
    assert read_labels("sem_eval_2018_ec", root) == list(HUB_SOURCES["sem_eval_2018_ec"].label_columns)
    assert record["datasets"]["sem_eval_2018_ec"]["splits"]["train"] == {"hub_split": "train", "rows": 1, "dropped": 1}
    # clinc's out-of-scope class goes, with its rows
    assert read_labels("clinc150", root) == ["restaurant reservation", "pay bill"]
    assert [r.text for r in read_benchmark("clinc150", "train", root).rows] == ["book a table", "pay"]
    # the five stance configs, concatenated under one label list in the local order
    stance = read_benchmark("tweet_eval_stance", "train", root)
    assert read_labels("tweet_eval_stance", root)[:3] == [
        "against legalization of abortion",
        "in favor of legalization of abortion",
        "no stance on legalization of abortion",
    ]
    assert [r.labels for r in stance.rows] == [
        ["against legalization of abortion"],
        ["in favor of atheism"],
        ["no stance on climate change is a real concern"],
        ["against feminist movement"],
        ["in favor of Hillary Clinton"],
    ]
    # SNLI keeps its own row format; pairs without a gold label are dropped
    pairs = read_nli("test", root)
    assert [(p.premise, p.hypothesis, p.label) for p in pairs] == [
        ("A dog runs.", "An animal moves.", "entailment"),
        ("A dog runs.", "A cat sleeps.", "contradiction"),
    ]
    assert read_labels("snli", root) == ["entailment", "neutral", "contradiction"]
    # the record names the hub source of every file
    saved = json.loads((root / RECORD_FILE).read_text())
    assert saved == record and saved["datasets"]["banking77"]["hub"] == ["PolyAI/banking77"]
    assert len(saved["datasets"]["tweet_eval_stance"]["hub"]) == 5
    assert ("PolyAI/banking77", None, "test") in stub.calls and ("clinc/clinc_oos", "plus", "train") in stub.calls
    assert not list(root.rglob("*.part"))


def test_refetching_replaces_files_and_keeps_the_record_of_others(tmp_path, stub):
    root = tmp_path / "data"
    fetch(root, ["sst2"], load_dataset=stub)
    (root / "sst2" / "test.jsonl").write_text("stale\n")
    record = fetch(root, ["banking77", "sst2"], load_dataset=stub)
    assert set(record["datasets"]) == {"sst2", "banking77"}
    assert len(read_benchmark("sst2", "test", root)) == 2


def _any_source_stub() -> StubHub:
    """Two rows for every (path, config, split) of the table, in the columns its entry reads."""
    datasets = {}
    for source in HUB_SOURCES.values():
        for part in source.parts or (source,):
            for split in source.local_splits:
                names = part.label_names
                row = {part.text: "some text", part.label: 0}
                features = {}
                if part.pair:
                    row[part.pair] = "a hypothesis"
                elif part.label_kind == "text":
                    inverse = {ours: hub for hub, ours in part.label_map.items()}
                    row[part.label] = inverse.get(names[0], names[0])
                elif part.label_kind == "multi":
                    row[part.label] = [0]
                    features = {part.label: Feature(feature=Feature(["a", "b"]))}
                elif part.label_kind == "columns":
                    row |= {column: i == 0 for i, column in enumerate(part.label_columns)}
                elif names is None:
                    features = {part.label: Feature(["first_class", *part.drop_labels])}
                key = part.path, part.config, part.splits.get(split, split)
                if key in datasets:  # trec and trec_fine read two columns of one hub dataset
                    row, features = {**datasets[key][0], **row}, {**datasets[key].features, **features}
                datasets[key] = HubDataset([row, row], features)
    return StubHub(datasets)


@pytest.fixture
def any_source(monkeypatch) -> StubHub:
    hub = _any_source_stub()
    monkeypatch.setattr(fetch_module, "import_load_dataset", lambda: hub)
    return hub


@pytest.mark.usefixtures("any_source")
def test_every_hub_dataset_gets_the_local_folder_layout(tmp_path):
    root = tmp_path / "data"
    fetch_module.main([str(root)])  # no --datasets: everything on the hub
    fetched = {p.name for p in root.iterdir() if p.is_dir()}
    assert fetched == set(LOCAL_LAYOUT) - LOCAL_ONLY_DATASETS  # every dataset is either fetched or local-only
    for name in fetched:
        assert {p.stem for p in (root / name).glob("*.jsonl")} == LOCAL_LAYOUT[name], name
        for split in LOCAL_LAYOUT[name]:
            rows = read_nli(split, root) if name == "snli" else read_benchmark(name, split, root).rows
            assert len(rows) == 2 * len(HUB_SOURCES[name].parts or [name]), (name, split)  # the stub's two each
        if name in MULTI_LABEL_DATASETS:
            assert read_benchmark(name, "train", root).multi_label


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_the_table_matches_the_shared_data_folders():
    for name, source in HUB_SOURCES.items():
        assert {p.stem for p in (SHARED_DATA / name).glob("*.jsonl")} == set(source.local_splits), name
    shared = {p.name for p in SHARED_DATA.iterdir() if p.is_dir()}
    assert shared == set(HUB_SOURCES) | LOCAL_ONLY_DATASETS


def test_the_table_agrees_with_the_rest_of_the_package():
    assert HUB_SOURCES["snli"].path == HUB_NLI[0]  # gliclass.data.nli.load_hub_nli reads the same dataset
    assert not set(HUB_SOURCES) & LOCAL_ONLY_DATASETS
    assert set(HUB_SOURCES) | LOCAL_ONLY_DATASETS >= MULTI_LABEL_DATASETS


def test_unknown_and_local_only_names_are_refused_before_any_download(tmp_path, stub):
    root = tmp_path / "data"
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['sst22'\].*On the hub: sst2, "):
        fetch(root, ["sst2", "sst22"], load_dataset=stub)
    with pytest.raises(ValueError, match=r"\['snips'\] local-only \(not on the Hugging Face hub"):
        fetch(root, ["snips"], load_dataset=stub)
    assert stub.calls == [] and not root.exists()
    with pytest.raises(SystemExit, match=r"error: cannot fetch unknown dataset\(s\) \['nope'\]"):
        fetch_module.main([str(root), "--datasets", "nope"])
    with pytest.raises(KeyError, match="no hub source for 'mpqa': it is local-only"):
        load_hub_benchmark("mpqa", load_dataset=stub)


def test_missing_datasets_package_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match="pip install datasets"):
        fetch(tmp_path / "data", ["sst2"])
    with pytest.raises(SystemExit, match=r"error: .*pip install datasets"):
        fetch_module.main([str(tmp_path / "data")])
    assert not (tmp_path / "data").exists()


def test_a_hub_split_that_maps_to_nothing_is_an_error(tmp_path):
    empty = StubHub(
        {("stanfordnlp/snli", None, "validation"): HubDataset([{"premise": "p", "hypothesis": "h", "label": -1}])}
    )
    with pytest.raises(DataFormatError, match="snli: the hub's 'validation' split gave no labelled rows"):
        fetch(tmp_path, ["snli"], load_dataset=empty)
    bad = StubHub(
        {("stanfordnlp/snli", None, "validation"): HubDataset([{"premise": "p", "hypothesis": "h", "label": 3}])}
    )
    with pytest.raises(DataFormatError, match=r"hub:stanfordnlp/snli/default/validation\[0\]: label id 3"):
        fetch(tmp_path, ["snli"], load_dataset=bad)
    assert not (tmp_path / "snli").exists()  # nothing written for a dataset that failed


def test_a_class_count_unlike_the_table_is_an_error():
    """label_names index the hub's class ids; a hub column with another number of classes would shift them."""
    three = HubDataset([{"text": "x", "label": 0}], {"label": Feature(["neg", "neutral", "pos"])})
    with pytest.raises(DataFormatError, match="has 3 classes .* but HUB_SOURCES names 2"):
        load_hub_benchmark("imdb", "test", load_dataset=lambda *a, **k: three)
    with pytest.raises(ValueError, match="premise/hypothesis pairs: load it with gliclass.data.nli.load_hub_nli"):
        load_hub_benchmark("snli", "test", load_dataset=lambda *a, **k: three)


def test_stance_parts_honour_a_limit(stub):
    bench = load_hub_benchmark("tweet_eval_stance", "train", limit=2, load_dataset=stub)
    assert len(bench) == 2 and len(bench.labels) == 15
    assert [call[1] for call in stub.calls] == ["stance_abortion", "stance_atheism"]  # the rest is never loaded


# ------------------------------------------------------------------ a missing data folder names the fetch command
def test_a_missing_data_folder_names_the_fetch_command_and_the_variable(tmp_path, monkeypatch):
    expected = r"python -m gliclass\.data\.fetch DIR.*GLICLASS_DATA_DIR=DIR"
    monkeypatch.delenv("GLICLASS_DATA_DIR", raising=False)
    monkeypatch.setattr(benchmarks_module, "default_data_root", lambda: tmp_path / "shared" / "data")
    with pytest.raises(FileNotFoundError, match=r"shared/data \(from the default .*" + expected):
        data_root()
    monkeypatch.setenv("GLICLASS_DATA_DIR", str(tmp_path / "unset"))
    with pytest.raises(FileNotFoundError, match=r"unset \(from \$GLICLASS_DATA_DIR\).*" + expected):
        data_root()
    with pytest.raises(FileNotFoundError, match=r"given \(from the explicit path\).*" + expected):
        read_benchmark("sst2", "test", tmp_path / "given")  # what the datamodule and the evaluation CLIs call


def test_a_missing_dataset_says_whether_fetch_can_build_it(tmp_path):
    (tmp_path / "sst2").mkdir()
    with pytest.raises(FileNotFoundError, match=r"`python -m gliclass.data.fetch DIR --datasets ag_news` builds it"):
        read_benchmark("ag_news", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'snips' is local-only \(not on the Hugging Face hub\)"):
        read_benchmark("snips", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="'sst22' is neither a hub dataset"):
        read_benchmark("sst22", "test", tmp_path)


def test_onnx_int8_evaluation_resolves_the_data_folder_like_the_rest(tmp_path, monkeypatch):
    from gliclass.onnx import evaluate as int8

    monkeypatch.setenv("GLICLASS_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere \(from \$GLICLASS_DATA_DIR\).*gliclass\.data\.fetch"):
        int8.main(["--datasets", "sst2", "--rows", "3"])


# ------------------------------------------------------------------ committed results carry their provenance
def test_int8_results_record_their_run_and_need_a_clean_tree(tmp_path, monkeypatch):
    from gliclass.evaluation import common
    from gliclass.onnx import evaluate as int8

    calls = []
    monkeypatch.setattr(int8, "evaluate", lambda *args: calls.append(args) or {"model": "m", "datasets": {}})
    monkeypatch.setattr(int8, "to_markdown", lambda report: "")
    out = tmp_path / "int8.json"
    argv = ["--data", str(tmp_path), "--datasets", "sst2", "--rows", "3", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *argv])
    monkeypatch.setattr(common, "git_commit", lambda: "abc1234+dirty")
    with pytest.raises(SystemExit, match=r"'abc1234\+dirty', not a clean commit.*commit first"):
        int8.main(argv)
    assert not out.exists() and not calls  # refused before the (long) run
    monkeypatch.setattr(common, "git_commit", lambda: "abc1234")
    int8.main(argv)
    run = json.loads(out.read_text())["run"]
    assert run["git_commit"] == "abc1234" and run["date"][:2] == "20"
    assert run["command"] == f"python -m gliclass.onnx.evaluate {' '.join(argv)}"
    assert calls[0][0] == tmp_path  # the --data folder, resolved by data_root


def test_no_committed_int8_result_lacks_provenance():
    """experiments/results/int8.json predated run records; it moved to legacy/ until it is rerun."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "results" / "int8.json"
    if path.exists():
        run = json.loads(path.read_text()).get("run", {})
        assert run.get("date") and run.get("command"), "int8.json has no run record"
        assert re.fullmatch(r"[0-9a-f]+", run.get("git_commit", "")), "int8.json comes from an uncommitted tree"
    legacy = path.parent / "legacy"
    if (legacy / "int8.json").exists():  # the old file: its README says why it is there and how to rerun it
        assert "python -m gliclass.onnx.evaluate" in (legacy / "README.md").read_text()
