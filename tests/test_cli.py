"""`gliclass` CLI: JSONL in/out, label sources, exit codes (2 usage, 1 failure), errors on stderr without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from gliclass import GLiClassModel, cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model, processor = tiny_model("bert", max_length=48)
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No user model or default model leaks in; one thread for tiny tensors."""
    monkeypatch.delenv(cli.MODEL_ENV, raising=False)
    monkeypatch.setattr(cli, "DEFAULT_MODEL", tmp_path / "models" / "default")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("gliclass") == "gliclass.cli:main"


def test_predict_texts_single_label(capsys, model_dir):
    code, rows, err = run(capsys, "predict", "--model", model_dir, "--labels", "positive, negative", "good", "bad")
    assert code == 0 and err == ""
    assert [row["text"] for row in rows] == ["good", "bad"]
    assert all(
        len(row["predictions"]) == 1 and row["predictions"][0]["label"] in {"positive", "negative"} for row in rows
    )


def test_predict_multi_label_threshold_and_all_scores(capsys, model_dir):
    args = ["predict", "--model", model_dir, "--labels", "food,service,music", "--multi-label", "--all-scores"]
    code, rows, _ = run(capsys, *args, "--threshold", "0", "the food was bad")
    assert code == 0 and len(rows[0]["predictions"]) == 3 and list(rows[0]["scores"]) == ["food", "service", "music"]
    scores = [p["score"] for p in rows[0]["predictions"]]
    assert scores == sorted(scores, reverse=True)
    assert rows[0]["scores"] == {p["label"]: p["score"] for p in rows[0]["predictions"]}


def test_predict_threshold_one_keeps_exactly_the_saturated_labels(capsys, model_dir, monkeypatch):
    """--threshold 1 keeps the labels that score exactly 1.0 and drops the rest (logits +100, 0, -100, +100)."""
    forward = GLiClassModel.forward

    def saturated(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        num = out.logits.shape[1]
        out.logits = torch.tensor([100.0, 0.0, -100.0]).repeat(num)[:num].expand_as(out.logits).clone()
        return out

    monkeypatch.setattr(GLiClassModel, "forward", saturated)
    args = ["predict", "--model", model_dir, "--labels", "food,service,music,price", "--multi-label"]
    code, rows, _ = run(capsys, *args, "--all-scores", "--threshold", "0", "the food was bad")
    assert code == 0 and [rows[0]["scores"][k] for k in ("food", "service", "price")] == [1.0, 0.5, 1.0]
    assert rows[0]["scores"]["music"] < 1e-30
    code, rows, _ = run(capsys, *args, "--threshold", "1", "the food was bad")
    assert code == 0 and rows[0]["predictions"] == [{"label": "food", "score": 1.0}, {"label": "price", "score": 1.0}]
    code, rows, _ = run(capsys, *args, "--threshold", "0.5", "the food was bad")
    assert code == 0 and [p["label"] for p in rows[0]["predictions"]] == ["food", "price", "service"]


def test_predict_long_text_truncate_in_bf16_matches_the_pipeline(capsys, model_dir):
    from gliclass.pipeline import ZeroShotPipeline

    text = " ".join(["the movie was good but the food was bad"] * 12)  # far past the 48-token budget
    args = ["predict", "--model", model_dir, "--labels", "food,service,music", "--multi-label", "--all-scores"]
    code, rows, err = run(capsys, *args, "--long-text", "truncate", "--precision", "bf16", text)
    assert code == 0 and err == ""
    pipe = ZeroShotPipeline.from_pretrained(model_dir, long_text="truncate", precision="bf16")
    assert rows[0]["scores"] == pytest.approx(pipe.scores(text, ["food", "service", "music"])[0], abs=1e-6)
    code, chunked, _ = run(capsys, *args, text)
    assert code == 0 and chunked[0]["scores"] != rows[0]["scores"]


def test_predict_jsonl_in_and_out_with_per_line_labels(capsys, model_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    lines = [{"id": 1, "text": "good movie"}, {"id": 2, "text": "bad food", "labels": ["food", "price"]}]
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    target = tmp_path / "out.jsonl"
    code, rows, _ = run(
        capsys, "predict", "--model", model_dir, "--labels", "positive,negative", "--input", source, "--output", target
    )
    assert code == 0 and rows == []
    written = [json.loads(line) for line in target.read_text().splitlines()]
    assert [row["id"] for row in written] == [1, 2]  # input fields are echoed back
    assert written[0]["predictions"][0]["label"] in {"positive", "negative"}
    assert written[1]["predictions"][0]["label"] in {"food", "price"}


def test_labels_file_lines_and_hierarchical_json(capsys, model_dir, tmp_path):
    lines = tmp_path / "labels.txt"
    lines.write_text("positive\n\nnegative\nneutral\n")
    code, rows, _ = run(capsys, "predict", "--model", model_dir, "--labels-file", lines, "--all-scores", "good")
    assert code == 0 and list(rows[0]["scores"]) == ["positive", "negative", "neutral"]
    tree = tmp_path / "labels.json"
    tree.write_text(json.dumps({"sentiment": ["positive", "negative"], "topic": ["food"]}))
    code, rows, _ = run(capsys, "predict", "--model", model_dir, "--labels-file", tree, "--all-scores", "good")
    assert code == 0 and list(rows[0]["scores"]) == ["sentiment.positive", "sentiment.negative", "topic.food"]


def test_model_from_environment(capsys, model_dir, monkeypatch):
    monkeypatch.setenv(cli.MODEL_ENV, str(model_dir))
    code, rows, _ = run(capsys, "predict", "--labels", "a,b", "text")
    assert code == 0 and len(rows) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "--labels", "a,b", "text"], "make run"),
        (["predict", "--model", "{missing}", "--labels", "a,b", "text"], "does not exist"),
        (["predict", "--model", "{model}", "--labels", "a,b"], "no texts"),
        (["predict", "--model", "{model}", "text"], "no labels"),
        (["predict", "--model", "{model}", "--labels", "a,a", "text"], "duplicate labels"),
        (["predict", "--model", "{model}", "--labels", "a,,b", "text"], "empty or whitespace"),
        (["predict", "--model", "{model}", "--labels", "a", "--threshold", "1.5", "text"], "threshold"),
        (["predict", "--model", "{model}", "--labels", "a", "--input", "{bad_jsonl}"], "line 2: not valid JSON"),
        (["predict", "--model", "{model}", "--labels", "a", "--input", "{bad_jsonl}", "text"], "not both"),
        (["predict", "--model", "{model}", "--labels", "a", "--int8", "text"], "no ONNX export"),
        (["predict", "--model", "{model}", "--labels", "a", ""], "text 0 is empty"),
        (["predict", "--model", "{model}", "--labels", "a", "--onnx", "--compile", "text"], "no ONNX export"),
    ],
)
def test_usage_errors_exit_2_with_a_message(capsys, model_dir, tmp_path, argv, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    names = {"{model}": str(model_dir), "{missing}": str(tmp_path / "nope"), "{bad_jsonl}": str(bad)}
    code, rows, err = run(capsys, *[names.get(a, a) for a in argv])
    assert code == 2 and rows == []
    assert message in err and "Traceback" not in err


def test_argparse_errors_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "--threshold", "high"])
    assert exit_info.value.code == 2 and "invalid float value" in capsys.readouterr().err
    for argv in (["--help"], ["predict", "--help"], ["export-onnx", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0 and "usage: gliclass" in capsys.readouterr().out
    assert cli.main([]) == 2 and "COMMAND" in capsys.readouterr().err


def _gliclass(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "gliclass"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gliclass.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop(cli.MODEL_ENV, None)
    return subprocess.run([*command, *argv], capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_subprocess_jsonl_from_stdin(model_dir):
    lines = "\n".join(json.dumps({"text": t}) for t in ["good movie", "😀 bad food"])
    done = _gliclass("predict", "--model", str(model_dir), "--labels", "positive,negative", "--input", "-", input=lines)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["text"] for row in rows] == ["good movie", "😀 bad food"]


def test_subprocess_usage_error_and_failure_exit_codes(tmp_path):
    done = _gliclass("predict", "--model", str(tmp_path / "missing"), "--labels", "a", "text")
    assert done.returncode == 2 and "does not exist" in done.stderr and done.stdout == ""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not a config")
    done = _gliclass("predict", "--model", str(broken), "--labels", "a", "text")
    assert done.returncode == 1 and "failed" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_export_onnx_command_then_predict_with_onnx(capsys, model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    code, rows, err = run(capsys, "export-onnx", "--model", model_dir, "--out", out, "--quantize", "int8")
    assert code == 0, err
    assert rows[0]["max_abs_logit_diff"] < 1e-4 and (out / "model.int8.onnx").is_file()
    base = ["predict", "--labels", "positive,negative", "--all-scores", "good movie"]
    _, torch_rows, _ = run(capsys, *base, "--model", model_dir)
    code, onnx_rows, _ = run(capsys, *base, "--model", out, "--onnx")
    assert code == 0 and onnx_rows[0]["scores"] == pytest.approx(torch_rows[0]["scores"], abs=1e-4)
    code, int8_rows, _ = run(capsys, *base, "--model", out, "--int8")
    assert code == 0 and list(int8_rows[0]["scores"]) == ["positive", "negative"]
    code, rows, err = run(capsys, *base, "--model", out, "--onnx", "--compile")
    assert code == 2 and rows == [] and "compile=True needs a torch model" in err and "Traceback" not in err
