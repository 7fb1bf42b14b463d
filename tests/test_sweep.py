"""The ablation sweep as users run it: `run.py -m ...` jobs record their status, `gliclass.evaluation.sweep` turns the
multirun directory into one table (every job shown, failed and unfinished ones included), and TensorBoard gets the
chosen config groups as hparams."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gliclass.evaluation import sweep
from tests.test_train_run import run_py


def fake_sweep(root: Path, task: list[str], jobs: list[tuple[list[str], dict | None]]) -> Path:
    """A multirun directory as Hydra and run.py leave it: multirun.yaml plus numbered job dirs (result.json optional)."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    for num, (overrides, result) in enumerate(jobs):
        job = root / str(num) / ".hydra"
        job.mkdir(parents=True)
        (job / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job / "config.yaml").write_text(yaml.safe_dump({"data": {"eval_datasets": ["b:test:300", "a:test:300"]}}))
        if result is not None:
            (root / str(num) / "result.json").write_text(json.dumps(result))
    return root


def completed(a: float, b: float) -> dict:
    metrics = {
        "test/a/f1_macro": a,
        "test/b/f1_macro": b,
        "test/f1_macro": (a + b) / 2,
        "embed_sim/a/f1_macro": 0.5,
        "embed_sim/b/f1_macro": 0.4,
        "perf/train_seconds": 120.0,
        "model/params": 2.0e7,
    }
    return {"status": "completed", "git_commit": "abc1234", "metrics": metrics}


def test_summary_shows_every_requested_job_with_its_status(tmp_path):
    root = fake_sweep(
        tmp_path / "sweep",
        ["experiment=x", "arch=uni,bi", "pooling=mean,attn"],
        [
            (["experiment=x", "arch=uni", "pooling=mean"], completed(0.6, 0.8)),
            (["experiment=x", "arch=uni", "pooling=attn"], {"status": "failed", "error": "ValueError: diverged"}),
            (["experiment=x", "arch=bi", "pooling=mean"], {"status": "running"}),
            # arch=bi pooling=attn: never started (no directory)
        ],
    )
    result = sweep.summarize(root)
    assert result["swept"] == ["arch", "pooling"] and result["fixed_overrides"] == ["experiment=x"]
    assert result["datasets"] == ["b", "a"], "evaluation sets keep the order of the job's config"
    status = {(j["values"]["arch"], j["values"]["pooling"]): j["status"] for j in result["jobs"]}
    assert status == {
        ("uni", "mean"): "completed",
        ("uni", "attn"): "failed",
        ("bi", "mean"): "running",
        ("bi", "attn"): "not started",
    }
    done = result["jobs"][0]
    assert done["f1_macro"] == {"b": 0.8, "a": 0.6} and done["mean"] == pytest.approx(0.7)
    assert result["embed_sim"]["mean"] == pytest.approx(0.45)

    text = sweep.render(result)
    assert "ValueError: diverged" in text and "**running**" in text and "**not started**" in text
    assert "| uni | mean | completed | 0.800 | 0.600 | 0.700 | 0.250 |" in text  # mean and Δ embed-sim
    assert "arch \\ pooling" in text  # the 2-D grid of the mean


def test_summary_of_a_sweep_with_no_finished_job_fails_clearly(tmp_path):
    root = fake_sweep(
        tmp_path / "sweep",
        ["arch=uni,bi"],
        [(["arch=uni"], {"status": "failed", "error": "boom"}), (["arch=bi"], None)],
    )
    with pytest.raises(SystemExit, match="no job of .* has finished.*arch=uni: failed.*arch=bi: no result"):
        sweep.summarize(root)
    result = subprocess.run(
        [sys.executable, "-m", "gliclass.evaluation.sweep", str(root), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "has finished" in result.stderr
    assert not (tmp_path / "out").exists(), "no empty table is written"


def test_summary_rejects_a_directory_that_is_not_a_multirun(tmp_path):
    with pytest.raises(SystemExit, match="not a Hydra multirun directory"):
        sweep.summarize(tmp_path)
    with pytest.raises(SystemExit, match="does not exist"):
        sweep.main([str(tmp_path / "missing")])


def test_an_unknown_group_option_lists_the_valid_ones():
    result = run_py("pooling=bogus", "--cfg", "job", timeout=300)
    assert result.returncode != 0
    assert "Could not find 'pooling/bogus'" in result.stderr and "attn" in result.stderr and "mean" in result.stderr


def read_hparams(event_dir: Path) -> dict:
    """The hparams TensorBoard's HParams tab reads from a job's event files (name -> value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    values = {}
    for events in event_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        for blob in content.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(blob)
            if data.HasField("session_start_info"):
                for name, value in data.session_start_info.hparams.items():
                    values[name] = value.string_value or value.number_value
    return values


@pytest.mark.slow
def test_a_tiny_sweep_with_a_diverging_job_summarises_and_logs_hparams(tmp_path):
    # 2 architectures x 2 logit scales; the NaN scale makes every loss non-finite, and with no skipped batch allowed
    # those jobs fail as a diverging run does
    result = run_py(
        "-m",
        "arch=uni,bi",
        "model.config.logit_scale_init_value=20.0,nan",
        "backbone=tiny_bert",
        "data=tiny",
        "++trainer.fast_dev_run=true",
        "module.min_batches=1",
        "module.max_skipped_fraction=0.0",
        "eval_untrained=false",
        "eval_embed_sim=false",
        "export=false",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode != 0, "a multirun with failed jobs exits nonzero"
    (root,) = (tmp_path / "train" / "multiruns" / "default").iterdir()  # an un-named sweep: default/<overrides>-<hash>
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"], "no job was skipped"

    out = tmp_path / "results"
    summary = sweep.main([str(root), "--out", str(out), "--name", "ablation"])
    status = {tuple(j["values"].values()): j["status"] for j in summary["jobs"]}
    assert status == {
        ("uni", "20.0"): "completed",
        ("uni", "nan"): "failed",
        ("bi", "20.0"): "completed",
        ("bi", "nan"): "failed",
    }
    failed = [j for j in summary["jobs"] if j["status"] == "failed"]
    assert all("skipped" in j["error"] for j in failed), [j["error"] for j in failed]
    assert all(j["mean"] is not None and j["params"] > 0 for j in summary["jobs"] if j["status"] == "completed")
    assert {"ablation.md", "ablation.json", "ablation.png"} <= {p.name for p in out.iterdir()}
    assert "**failed**" in (out / "ablation.md").read_text()

    # one log root for the sweep: each job's TensorBoard hparams hold its chosen groups and its final metrics
    for num, arch in enumerate(["uni", "uni", "bi", "bi"]):
        if num % 2:
            continue  # the failed jobs log no final hparams
        hparams = read_hparams(root / str(num) / "tensorboard")
        assert hparams["choice/arch"] == arch and hparams["choice/data"] == "tiny"
        assert hparams["model/config/architecture_type"] == {"uni": "uni-encoder", "bi": "bi-encoder"}[arch]
