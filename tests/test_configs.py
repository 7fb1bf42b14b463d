"""Hydra configs: every group option composes, and the launcher configs (SLURM, submitit local) work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hydra_conf_dir
from hydra import compose
from omegaconf import OmegaConf

from gliclass.config import GLiClassConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = ("arch", "backbone", "pooling", "scorer", "loss", "stage", "data", "trainer", "logger", "debug", "distill")


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    """One Hydra initialisation for the whole module: composing is then cheap."""
    with hydra_conf_dir():
        yield


def compose_train(overrides: list[str], hydra: bool = False):
    return compose(config_name="train", overrides=overrides, return_hydra_config=hydra)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    for option in options(group):
        cfg = compose_train([f"{group}={option}"])
        assert cfg.model._target_ and cfg.module._target_ and cfg.trainer._target_


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose_into_a_valid_model_config(experiment):
    cfg = compose_train([f"experiment={experiment}"])
    assert cfg.run_name == experiment
    fields = OmegaConf.to_container(cfg.model.config)
    assert set(fields) <= set(GLiClassConfig().to_dict()), "unknown GLiClassConfig fields"


def test_group_names_map_to_the_official_config_values():
    cfg = compose_train(["arch=fused", "pooling=mean", "scorer=dot"])
    expected = {"architecture_type": "bi-encoder-fused", "pooling_strategy": "avg", "scorer_type": "simple"}
    assert OmegaConf.to_container(cfg.model.config).items() >= expected.items()
    # cross-attention reads every text token, so it overrides the pooling
    assert compose_train(["pooling=attn", "scorer=cross_attn"]).model.config.pooling_strategy == "pass"


def test_default_run_is_the_offline_minilm_bi_encoder_from_an_identity_head():
    cfg = compose_train([])
    assert cfg.model.backbone.name == "minilm" and cfg.model.config.architecture_type == "bi-encoder"
    assert cfg.model.head_init == "identity" and cfg.model.config.pooling_strategy == "avg"
    # the paper's two groups; the short CPU run trains them faster than the paper's 1.2M-example recipe
    assert cfg.module.optimizer.lr == cfg.optim.lr and cfg.module.param_groups.encoder_lr == cfg.optim.encoder_lr
    assert cfg.module.param_groups.weight_decay == 0.01
    paper = compose_train(["experiment=paper_base"])
    assert (paper.module.optimizer.lr, paper.module.param_groups.encoder_lr) == (3e-5, 1e-5)
    checkpoint = cfg.callbacks.model_checkpoint
    assert (checkpoint.every_n_train_steps, checkpoint.save_top_k, checkpoint.save_last) == (1000, 3, True)
    names = lambda specs: {spec.split(":")[0] for spec in specs}  # noqa: E731
    assert names(cfg.data.eval_datasets).isdisjoint(names(cfg.data.benchmarks)), "evaluation data must be held out"


def run_py(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_slurm_launcher_config_composes():
    cfg = compose_train(["hydra/launcher=submitit_slurm", "trainer=ddp"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.additional_parameters.requeue is True and launcher.max_num_timeout > 0
    # one task per device (Lightning reads SLURM's variables), one node count: both from the trainer group
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 1)


@pytest.mark.slow
def test_slurm_launcher_config_prints_from_the_command_line():
    result = run_py("--cfg", "hydra", "hydra/launcher=submitit_slurm")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SlurmLauncher" in result.stdout and "requeue: true" in result.stdout


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_tiny_job(tmp_path):
    result = run_py(
        "-m",
        "hydra/launcher=submitit_local",
        "debug=fdr",
        "backbone=tiny_bert",
        "data=tiny",
        "test=false",
        f"paths.log_dir={tmp_path}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "debug" / "multiruns" / "default").iterdir()  # an un-named sweep: default/<overrides>-<hash>
    (job_log,) = (sweep / ".submitit").rglob("*_log.out")  # the job ran in its own process, through submitit
    assert "Job completed successfully" in job_log.read_text()
    assert (sweep / "0" / ".hydra" / "config.yaml").is_file()
