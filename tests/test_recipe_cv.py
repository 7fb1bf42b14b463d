"""Leave-family-out cross-validation (docs/recipe_cv.md): the families cover every train-only set and keep the sets
that share texts together, the folds partition the families, no fold trains on what it scores, and the summary
computes the margin over embed-sim as documented."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA, hydra_conf_dir
from hydra import compose
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

import gliclass.resolvers  # noqa: F401  (registers the config resolvers the data configs use)
from gliclass.data.benchmarks import PAPER_BENCHMARKS, list_benchmarks, read_benchmark
from gliclass.data.datamodule import GLiClassDataModule
from gliclass.data.families import FAMILIES, FAMILY_OF, FOLDS, family_of, fold_datasets, held_out_leaks
from gliclass.evaluation import cv

ROOT = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")


def test_families_are_disjoint_and_hold_no_paper_set():
    listed = [name for names in FAMILIES.values() for name in names]
    assert len(listed) == len(set(listed)) == len(FAMILY_OF)
    assert not set(listed) & set(PAPER_BENCHMARKS)


@needs_data
def test_every_train_only_set_has_a_family():
    sets = set(list_benchmarks(SHARED_DATA, include_nli=False)) - set(PAPER_BENCHMARKS)
    assert sets == set(FAMILY_OF), (sorted(sets - set(FAMILY_OF)), sorted(set(FAMILY_OF) - sets))


@pytest.mark.parametrize(
    "pair",
    [
        ("trec", "trec_fine"),  # the same 5,452 questions
        ("sem_eval_2018_ec", "tweet_eval_emotion"),  # 1,810 shared tweets
        ("tweet_eval_offensive", "tweet_eval_hate"),
        ("airline_sentiment", "airline_complaints"),
        ("uci_imdb_sentences", "uci_yelp_sentences"),
        ("mpqa", "subj"),
        ("go_emotions", "tweet_eval_emotion"),
    ],
)
def test_sets_that_share_texts_share_a_family(pair):
    assert family_of(pair[0]) == family_of(pair[1])


def test_an_unknown_set_is_an_error_naming_it():
    with pytest.raises(KeyError, match="'my_set' has no family"):
        family_of("my_set")
    with pytest.raises(KeyError, match="unknown families"):
        held_out_leaks(["trec"], ["questionz"])


def test_folds_partition_the_families():
    held = [family for families in FOLDS.values() for family in families]
    assert sorted(held) == sorted(FAMILIES)


@pytest.mark.parametrize("fold", list(FOLDS))
def test_fold_configs_hold_out_and_score_their_families(fold):
    cfg = yaml.safe_load((ROOT / "conf" / "fold" / f"{fold}.yaml").read_text())["data"]
    assert cfg["holdout_families"] == list(FOLDS[fold])
    assert cfg["eval_datasets"] == [f"{name}:train:500" for name in fold_datasets(fold)]


@pytest.fixture(scope="module")
def compose_cfg():
    with hydra_conf_dir():
        yield lambda overrides: compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("data", ["zeroshot", "zeroshot_all"])
@pytest.mark.parametrize("fold", list(FOLDS))
def test_no_fold_trains_on_a_family_it_scores(compose_cfg, fold, data):
    cfg = compose_cfg(["experiment=recipe_cv", f"fold={fold}", f"data={data}"])
    datamodule = GLiClassDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"} | {"data_dir": None})
    trained = [b.name for b in datamodule.benchmarks]
    assert trained and not held_out_leaks(trained, FOLDS[fold])
    assert {family_of(name) for name in datamodule.eval_names} == set(FOLDS[fold])
    assert not cfg.export and cfg.eval_embed_sim


def test_a_cv_run_without_its_fold_stops_at_once(compose_cfg):
    cfg = compose_cfg(["experiment=recipe_cv"])
    with pytest.raises(MissingMandatoryValue, match="holdout_families"):
        _ = cfg.data.holdout_families


def test_a_fold_that_scores_a_set_it_does_not_hold_out_is_refused():
    with pytest.raises(ValueError, match=r"eval_datasets \['clinc150'\] are not in a held-out family"):
        GLiClassDataModule(benchmarks=["trec"], holdout_families=["questions"], eval_datasets=["clinc150:train"])


def test_rows_per_family_splits_each_familys_rows_over_its_sets():
    datamodule = GLiClassDataModule(
        benchmarks=["trec", "trec_fine", "clinc150", "mpqa:train:10", "subj"],
        holdout_families=["subjectivity"],
        eval_datasets=["mpqa:train:5"],
        rows_per_family=101,
    )
    assert {b.name: b.limit for b in datamodule.benchmarks} == {"trec": 51, "trec_fine": 51, "clinc150": 101}


def _job(root: Path, num: int, overrides: list[str], status: str, metrics: dict | None = None) -> None:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "result.json").write_text(json.dumps({"status": status, "metrics": metrics or {}, "git_commit": "abc"}))


def _metrics(model: float, tuned: float, base: float, sets=("a", "b")) -> dict:
    out = {}
    for i, name in enumerate(sets):
        out |= {
            f"test/{name}/f1_macro": model + i,
            f"zeroshot_finetuned/{name}/f1_macro": tuned + i,
            f"embed_sim/{name}/f1_macro": base + i,
        }
    return out | {"test/f1_macro": 99.0}  # the all-set mean is not a set


def test_cv_summary_groups_variants_and_needs_every_fold(tmp_path):
    folds = list(FOLDS)
    for i, fold in enumerate(folds):
        _job(tmp_path, i, [f"fold={fold}", "data=zeroshot"], "completed", _metrics(0.5 + 0.01 * i, 0.4, 0.45))
    for i, fold in enumerate(folds[:-1]):
        _job(tmp_path, 10 + i, [f"fold={fold}", "data=zeroshot_all"], "completed", _metrics(0.6, 0.6, 0.5))
    _job(tmp_path, 20, [f"fold={folds[-1]}", "data=zeroshot_all"], "failed")
    summary = cv.main([str(tmp_path), "--out", str(tmp_path / "out")])
    full = summary["data=zeroshot"]
    assert full["cv_margin"]["exported"] == pytest.approx(0.05 + 0.01 * 2)  # mean of 0.05 ... 0.09
    assert full["cv_margin"]["fine-tuned"] == pytest.approx(-0.05)
    partial = summary["data=zeroshot_all"]
    assert partial["cv_margin"] == {} and partial["missing"] == [f"{folds[-1]}: failed"]
    text = (tmp_path / "out" / "cv.md").read_text()
    assert "**+0.0700**" in text and "incomplete" in text


def test_a_margin_needs_embed_sim_from_the_same_job():
    with pytest.raises(ValueError, match="no embed_sim score"):
        cv.fold_margins({"test/a/f1_macro": 0.5}, "test")
    assert math.isnan(cv.fold_margins({}, "test")[0])


def test_the_sweep_summary_of_a_cv_sweep_adds_the_cv_table(tmp_path):
    from gliclass.evaluation import sweep

    folds = list(FOLDS)
    (tmp_path / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"overrides": {"task": ["experiment=recipe_cv", f"fold={','.join(folds)}"]}}})
    )
    for i, fold in enumerate(folds):
        _job(tmp_path, i, ["experiment=recipe_cv", f"fold={fold}"], "completed", _metrics(0.6, 0.55, 0.5))
    sweep.main([str(tmp_path), "--out", str(tmp_path / "out"), "--name", "cvsweep"])
    table = json.loads((tmp_path / "out" / "cvsweep_cv.json").read_text())
    assert table["experiment=recipe_cv"]["cv_margin"]["exported"] == pytest.approx(0.1)


def test_cv_summary_over_several_sweeps_compares_with_the_baseline(tmp_path):
    """One directory per variant (scripts/gpu/cv_batch.py): one table, Δ against the named baseline."""
    for name, model in (("cv_base", 0.6), ("cv_alt", 0.63)):
        for i, fold in enumerate(FOLDS):
            _job(tmp_path / name, i, [f"run_name={name}", f"fold={fold}"], "completed", _metrics(model, 0.5, 0.5))
    summary = cv.main([str(tmp_path / "cv_base"), str(tmp_path / "cv_alt"), "--baseline", "run_name=cv_base"])
    assert summary["run_name=cv_alt"]["cv_margin"]["exported"] == pytest.approx(0.13)
    text = (tmp_path / "cv_base" / "cv.md").read_text()
    assert "| `run_name=cv_alt` | +0.1300 | +0.0300 | +0.0000 | +0.0000 |" in text
    with pytest.raises(SystemExit, match="exactly one"):
        cv.main([str(tmp_path / "cv_base"), str(tmp_path / "cv_alt"), "--baseline", "run_name=cv"])
    with pytest.raises(SystemExit, match="more than one sweep.*both completed"):
        cv.main([str(tmp_path / "cv_base"), str(tmp_path / "cv_base")])
    (tmp_path / "cv_base.log").write_text("a group's console log beside its directory\n")
    with pytest.raises(SystemExit, match="cv_base.log: not a sweep directory"):
        cv.main([str(tmp_path / "cv_base"), str(tmp_path / "cv_base.log")])
    # one directory per fold: the folds of one variant merge
    for i, fold in enumerate(FOLDS):
        _job(tmp_path / f"split_{fold}", i, ["run_name=cv_split", f"fold={fold}"], "completed", _metrics(0.7, 0.5, 0.5))
    split = cv.main([str(tmp_path / f"split_{fold}") for fold in FOLDS])
    assert split["run_name=cv_split"]["cv_margin"]["exported"] == pytest.approx(0.2)


def test_gpu_batch_plan_builds_its_commands(tmp_path):
    """scripts/gpu/cv_batch.py: every group of the committed plan is one run.py process (a multirun or one run), the
    harness scores the export on the 10 paper sets, and the paper-set list matches the package's."""
    import importlib.util

    from gliclass.data.benchmarks import PAPER_BENCHMARKS

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("cv_batch", root / "scripts" / "gpu" / "cv_batch.py")
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    assert set(batch.PAPER_SETS) == set(PAPER_BENCHMARKS)
    plans = sorted((root / "experiments" / "plans").glob("*.yaml"))
    assert len(plans) >= 3
    groups = []
    for path in plans:
        plan = yaml.safe_load(path.read_text())
        names = [g["name"] for g in plan["groups"]]
        assert len(set(names)) == len(names), path.name
        groups += plan["groups"]
    for group in groups:
        cmds = batch.commands(group, tmp_path, "python3")
        assert cmds[0][:2] == ["python3", "run.py"]
        if group.get("multirun"):
            assert cmds[0][2] == "-m" and cmds[0][-1] == f"hydra.sweep.dir={tmp_path / group['name']}"
        if group["name"].startswith("cv_"):
            folds = next(a.split("=", 1)[1] for a in cmds[0] if a.startswith("fold="))
            assert "experiment=recipe_cv" in cmds[0] and set(folds.split(",")) <= set(FOLDS)
        if group.get("harness"):
            assert "--datasets" in cmds[1] and cmds[1][cmds[1].index("--datasets") + 1] == ",".join(batch.PAPER_SETS)
    with pytest.raises(SystemExit, match="run_name"):
        batch.commands({"name": "x", "harness": True, "args": []}, tmp_path, "python3")


def test_the_next_plans_variants_compose_and_change_one_setting(compose_cfg):
    """experiments/plans/gpu_2026-12-05.yaml (decisions 19-26): every variant composes on a fold (its override names
    a real config key) and differs from the baseline's config in its own setting(s) only."""
    root = Path(__file__).resolve().parents[1]
    plan = yaml.safe_load((root / "experiments" / "plans" / "gpu_2026-12-05.yaml").read_text())

    def flat(cfg, prefix=""):
        out = {}
        for key, value in cfg.items():
            out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        return out

    def config(args):
        overrides = [a for a in args if not a.startswith("fold=")] + ["fold=f0"]
        return flat(OmegaConf.to_container(compose_cfg(overrides), resolve=False))

    base = config(next(g["args"] for g in plan["groups"] if g["name"] == "cv_baseline"))
    for group in plan["groups"]:
        if group["name"] == "cv_baseline":
            continue
        changed = {key for key, value in config(group["args"]).items() if base.get(key, "<absent>") != value}
        setting = {
            a.split("=", 1)[0] for a in group["args"] if "=" in a and a.split("=", 1)[0] not in ("fold", "experiment")
        }
        assert changed - {"run_name"} and changed <= setting | {"run_name"}, (group["name"], changed)


def test_the_default_recipe_holds_the_cv_decisions(compose_cfg):
    """docs/recipe_cv.md's decision table, as the default run composes it: the all-sets mix at 560 rows per family
    (decisions 1 and 4), alpha 0.5 (2), encoder lr 3e-5 (3)."""
    cfg = compose_cfg([])
    assert cfg.data.rows_per_family == 560 and len(cfg.data.benchmarks) == 28
    assert cfg.weight_ensemble_alpha == 0.5 and cfg.optim.encoder_lr == 3e-5 and cfg.optim.gate_lr is None


def test_edge_cpu_is_the_cv_chosen_recipe(compose_cfg):
    """Decision 18: the release recipe trains exactly what the default run trains (1120 rows per family did not beat
    560 on the CV); only its name, tags and time budget differ."""

    def flat(cfg, prefix=""):
        out = {}
        for key, value in cfg.items():
            out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        return out

    default = flat(OmegaConf.to_container(compose_cfg([]), resolve=False))
    edge = flat(OmegaConf.to_container(compose_cfg(["experiment=edge_cpu"]), resolve=False))
    differ = {key for key in default.keys() | edge.keys() if default.get(key, "<absent>") != edge.get(key, "<absent>")}
    assert differ == {"run_name", "tags", "trainer.max_time"}, differ


def test_a_fold_rerun_that_pins_a_changed_default_joins_its_variant_only_if_it_resolved_alike(tmp_path):
    """--same-if-resolved data.rows_per_family: a fold re-run with data.rows_per_family=280 (pinned because the default
    became 560 after the other folds ran at 280) is the same variant; one that resolved 560 is refused."""

    def job(root, num, overrides, rows):
        _job(root, num, overrides, "completed", _metrics(0.6, 0.5, 0.5))
        (root / str(num) / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"rows_per_family": rows}}))

    for i, fold in enumerate(list(FOLDS)[:-1]):
        job(tmp_path / "batch", i, ["run_name=v", f"fold={fold}"], 280)
    last = list(FOLDS)[-1]
    job(tmp_path / "rerun", 0, ["run_name=v", "data.rows_per_family=280", f"fold={last}"], 280)
    dirs = [str(tmp_path / "batch"), str(tmp_path / "rerun")]
    assert cv.main(dirs)["run_name=v"]["missing"]  # without the option: two variants, neither complete
    merged = cv.main([*dirs, "--same-if-resolved", "data.rows_per_family"])
    assert merged["run_name=v"]["cv_margin"]["exported"] == pytest.approx(0.1)
    job(tmp_path / "wrong", 0, ["run_name=v", "data.rows_per_family=560", f"fold={last}"], 560)
    # the batch's own last fold, stopped at its deadline, is superseded by the completed re-run
    _job(tmp_path / "batch", 9, ["run_name=v", f"fold={last}"], "running")
    (tmp_path / "batch" / "9" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"rows_per_family": 280}}))
    rerun = cv.main([*dirs, "--same-if-resolved", "data.rows_per_family"])["run_name=v"]
    assert rerun["cv_margin"]["exported"] == pytest.approx(0.1)
    _job(tmp_path / "stopped_a", 0, ["run_name=w", f"fold={last}"], "running")
    _job(tmp_path / "stopped_b", 0, ["run_name=w", f"fold={last}"], "failed")
    with pytest.raises(SystemExit, match="neither completed"):
        cv.main([str(tmp_path / "stopped_a"), str(tmp_path / "stopped_b")])
    with pytest.raises(SystemExit, match="resolved data.rows_per_family differently"):
        cv.main([str(tmp_path / "batch"), str(tmp_path / "wrong"), "--same-if-resolved", "data.rows_per_family"])


def test_multi_label_rows_drop_leaves_them_out_before_the_sample_and_counts_them():
    """data.multi_label_rows (issue 22, item 2): drop leaves every training row with several true labels out of the
    mix before the seeded sample, so the set still gives its `limit` rows; keep trains on them as they are."""

    def mix(mode):
        datamodule = GLiClassDataModule(
            benchmarks=["sem_eval_2018_ec:train:60"], multi_label_rows=mode, exclude_near_duplicates=False, seed=3
        )
        return datamodule, datamodule.build_mix()

    kept_dm, kept = mix("keep")
    dropped_dm, dropped = mix("drop")
    assert sum(len(ex.true_labels) > 1 for ex in kept) > 10 and kept_dm.multi_label_rows_dropped == {}
    assert len(dropped) == len(kept) == 60
    assert all(len(ex.true_labels) == 1 for ex in dropped)
    full = read_benchmark("sem_eval_2018_ec", "train")
    assert dropped_dm.multi_label_rows_dropped == {"sem_eval_2018_ec": sum(len(r.labels) > 1 for r in full.rows)}
    assert all(ex.meta["multi_label"] for ex in dropped)  # the task stays multi-label; only the rows differ


def test_drop_multi_label_rows_without_a_sample_takes_the_first_single_label_rows_and_a_bad_mode_is_refused():
    split = read_benchmark("go_emotions", "train", limit=40, drop_multi_label_rows=True)
    full = read_benchmark("go_emotions", "train")
    single = [r.text for r in full.rows if len(r.labels) <= 1]
    assert [r.text for r in split.rows] == single[:40] and split.multi_label
    assert split.multi_label_dropped == len(full) - len(single) > 0
    with pytest.raises(ValueError, match=r"multi_label_rows='first': choose one of \['keep', 'drop'\]"):
        GLiClassDataModule(benchmarks=["trec"], multi_label_rows="first")


def test_the_default_recipe_keeps_multi_label_rows(compose_cfg):
    assert compose_cfg([]).data.multi_label_rows == "keep"
    assert compose_cfg(["data.multi_label_rows=drop"]).data.multi_label_rows == "drop"
