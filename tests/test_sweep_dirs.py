"""Every sweep its own directory (issue 23, item 3): un-named multiruns are named after their overrides, named ones
keep their name, a job (also one unpickled by a requeued submitit job) resolves the directory its sweep was launched
in, and summarising a sweep writes beside it, never over the committed tables."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from gliclass.evaluation import sweep
from gliclass.training.resume import sweep_name

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def loader(tmp_path):
    """Hydra's config loader over conf/ (what `python run.py -m ...` composes with), logs under tmp_path."""
    GlobalHydra.instance().clear()
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


def master_config(loader, overrides: list[str], tmp_path: Path):
    """The sweep's own config, as Hydra composes it before launching the jobs (no HydraConfig is set for it)."""
    HydraConfig.instance().cfg = None
    return loader.load_configuration("train", [*overrides, f"paths.log_dir={tmp_path}"], run_mode=RunMode.MULTIRUN)


def test_sweep_names_unnamed_by_their_overrides_named_by_run_name():
    first = sweep_name("default", ["arch=uni,bi", "pooling=first,mean"])
    assert first.startswith("default/arch=uni,bi_pooling=first,mean-")
    assert sweep_name("default", ["arch=uni,bi", "pooling=first,mean"]) == first  # the same command: the same sweep
    assert sweep_name("default", ["arch=uni,bi", "pooling=first,mean", "loss=contrastive"]) != first
    # ckpt_path says how to run the sweep, not which one: adding it to a rerun resumes the same jobs
    assert sweep_name("default", ["arch=uni,bi", "pooling=first,mean", "ckpt_path=last"]) == first
    assert sweep_name("ablation_cpu", ["arch=uni,bi"]) == "ablation_cpu"
    odd = sweep_name("default", ["data.benchmarks=['a:train:8','b/c']", "+x=" + "y" * 200])
    assert "/" not in odd.removeprefix("default/") and len(odd) < 100 and "'" not in odd


def test_two_unnamed_sweeps_get_two_directories_named_ones_keep_theirs(loader, tmp_path):
    first = master_config(loader, ["arch=uni,bi", "loss=focal"], tmp_path).hydra.sweep.dir
    second = master_config(loader, ["arch=uni,bi", "loss=contrastive", "ckpt_path=last"], tmp_path).hydra.sweep.dir
    optuna = master_config(loader, ["hparams_search=optuna"], tmp_path).hydra.sweep.dir
    assert len({first, second, optuna}) == 3
    for path in (first, second, optuna):
        assert Path(path).parent == tmp_path / "train" / "multiruns" / "default"
    named = master_config(loader, ["experiment=ablation_cpu", "arch=uni,bi"], tmp_path).hydra.sweep.dir
    assert named == str(tmp_path / "train" / "multiruns" / "ablation_cpu")
    by_name = master_config(loader, ["run_name=mine", "arch=uni,bi"], tmp_path).hydra.sweep.dir
    assert by_name == str(tmp_path / "train" / "multiruns" / "mine")
    # a single run's directory still depends on the run name only (ckpt_path=auto and requeues find it)
    single = loader.load_configuration("train", ["loss=contrastive", f"paths.log_dir={tmp_path}"], RunMode.RUN)
    assert single.hydra.run.dir == str(tmp_path / "train" / "runs" / "default")


def test_a_job_and_its_requeued_copy_resolve_the_sweeps_directory(loader, tmp_path):
    """Hydra composes each job's config afresh with the job's own overrides, and a submitit job unpickles the
    sweep's config (again when SLURM requeues it): both must land in the directory the sweep was launched in, not in
    one named after the job's overrides."""
    master = master_config(loader, ["arch=uni,bi", "loss=focal"], tmp_path)
    sweep_dir = master.hydra.sweep.dir
    # a job's overrides: the sweep's, with one value of each swept key
    job_overrides = ["arch=bi", "loss=focal", f"paths.log_dir={tmp_path}"]
    job = loader.load_sweep_config(master, job_overrides)
    HydraConfig.instance().set_config(job)  # what run_job does before it reads the job's directory
    assert job.hydra.sweep.dir == sweep_dir
    # submitit pickles the launcher with the sweep's config; the requeued job composes its config from the copy
    requeued_master = pickle.loads(pickle.dumps(master))
    requeued = loader.load_sweep_config(requeued_master, job_overrides)
    HydraConfig.instance().set_config(requeued)
    assert requeued.hydra.sweep.dir == sweep_dir


def fake_sweep(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["arch=uni,bi"]}}}))
    for num, arch in enumerate(["uni", "bi"]):
        (root / str(num) / ".hydra").mkdir(parents=True)
        (root / str(num) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"arch={arch}"]))
        metrics = {"test/a/f1_macro": 0.5 + num / 10, "test/f1_macro": 0.5 + num / 10}
        (root / str(num) / "result.json").write_text(json.dumps({"status": "completed", "metrics": metrics}))
    return root


def test_a_summary_goes_beside_the_sweep_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default of experiments/results would land here
    root = fake_sweep(tmp_path / "logs" / "sweep")
    sweep.main([str(root)])
    assert {"summary.md", "summary.json", "summary.png"} <= {p.name for p in root.iterdir()}
    assert not (tmp_path / "experiments").exists()
    assert len(sweep.summarize(root)["jobs"]) == 2  # the summary files are not taken for jobs
    sweep.main([str(root), "--out", str(tmp_path / "results"), "--name", "ablation"])  # the README's explicit form
    assert {"ablation.md", "ablation.json"} <= {p.name for p in (tmp_path / "results").iterdir()}


def test_the_readmes_summary_commands_that_write_committed_tables_say_where():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if "gliclass.evaluation.sweep " in line]
    named = [line for line in lines if "--name" in line]
    assert named and all("--out experiments/results" in line for line in named), named
