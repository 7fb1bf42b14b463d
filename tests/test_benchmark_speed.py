"""The speed harness end to end on a tiny model: one pass per cell, worker processes, tables, JSON and plot.

Speed itself is never asserted: only that every cell, target and file is produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_cpp_compiler

from gliclass.evaluation import speed, speed_harness, speed_inputs
from gliclass.evaluation.workers import Worker, WorkerError

WORDS = ["the", "movie", "was", "good", "and", "the", "plot", "was", "bad", "but", "i", "love", "the", "music"]


def write_dataset(root: Path, name: str, labels: list[str], split: str = "test") -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "labels.json").write_text(json.dumps(labels))
    rows = [{"text": " ".join(WORDS[: 3 + i]), "labels": [labels[i % len(labels)]]} for i in range(8)]
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def bench_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_dataset(root, speed_inputs.LABEL_SOURCE, ["good", "bad", "music", "plot"], split="train")
    for name in {speed_inputs.TEXT_SOURCE, *speed_inputs.MIXED_SOURCES}:
        write_dataset(root, name, ["good", "bad"])
    return root


@pytest.fixture
def tiny_dirs(tmp_path: Path, make_tiny) -> tuple[Path, Path]:
    dirs = []
    for arch in ("uni-encoder", "bi-encoder"):
        model, processor = make_tiny(architecture_type=arch)
        out = tmp_path / arch
        model.save_pretrained(out)
        processor.save_pretrained(out)
        dirs.append(out)
    return dirs[0], dirs[1]


def test_rotate_spreads_the_order():
    assert speed_harness.rotate(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert speed_harness.rotate(["a", "b", "c"], 3) == ["a", "b", "c"]


@pytest.mark.slow
@needs_cpp_compiler  # ours-fast runs torch.compile
def test_speed_harness_one_pass(tiny_dirs: tuple[Path, Path], bench_data: Path, tmp_path: Path):
    uni, bi = tiny_dirs
    out = tmp_path / "out"
    argv = ["--model", str(uni), "--bi-model", str(bi), "--data-dir", str(bench_data), "--out", str(out)]
    argv += ["--systems", "ours,ours-fast,ours-bi-cached,cross-encoder", "--labels", "1,4", "--lengths", "8"]
    argv += ["--passes", "1", "--batched-texts", "4", "--batched-passes", "1", "--batch-size", "2"]
    result = speed.main(argv)
    assert [(c["text_tokens"], c["labels"]) for c in result["cells"]] == [(8, 1), (8, 4)]
    systems = {"ours", "ours-fast", "ours-bi-cached", "cross-encoder"}
    for cell in result["cells"]:
        assert set(cell["systems"]) == systems
        for name in ("ours", "ours-fast"):
            assert cell["systems"][name]["labels_scored"] == cell["labels"]
            assert cell["systems"][name]["passes"] == 1
    assert set(result["batched"]["systems"]) == systems
    assert result["backends"]["ours-fast"] == "torch+compile"
    assert "128_labels_256_tokens_ours-fast_vs_cross_ge_50x" not in result["targets"]  # no such cell was run
    assert all(m["maxrss_mb"] > 0 for m in result["memory"].values())
    assert "bi_cached_keeps_ge_0.8_at_max_labels" in result["targets"]
    assert {p.name for p in out.iterdir()} == {"speed.json", "speed.md", "speed.png"}


@pytest.mark.slow
def test_worker_reports_errors_without_dying(tiny_dirs: tuple[Path, Path]):
    with Worker("ours", tiny_dirs[0]) as worker:
        with pytest.raises(WorkerError, match="label list is empty"):
            worker.request(cmd="scores", texts=["good movie"], labels=[], multi_label=True)
        reply = worker.request(cmd="scores", texts=["good movie"], labels=["good", "bad"], multi_label=False)
        assert sum(reply["scores"][0]) == pytest.approx(1.0, abs=1e-5)


class FakeWorker:
    """Answers `time` requests with scripted pass times and logs the order it was asked in."""

    def __init__(self, name: str, seconds: float, log: list[str], fail: bool = False) -> None:
        self.name, self.seconds, self.log, self.fail = name, seconds, log, fail

    def request(self, cmd: str, passes: int, warmup: int, **request):
        if self.fail:
            raise WorkerError(f"{self.name} crashed")
        self.log += [self.name] * passes
        return {"seconds": [self.seconds] * passes, "labels_scored": len(request["labels"])}


def test_interleaved_cells_take_turns_cap_and_survive_errors():
    log: list[str] = []
    workers = {
        "a": FakeWorker("a", 0.01, log),
        "b": FakeWorker("b", 2.0, log),  # slow: sits out once past the cap
        "c": FakeWorker("c", 0.5, log, fail=True),
    }
    request = {"texts": ["x"], "labels": ["l1", "l2"], "batch_size": 1, "multi_label": True}
    result = speed_harness.interleaved(workers, ["a", "b", "c"], request, passes=4, cap=3.0)
    assert log == ["a", "b", "b", "a", "a", "a"]  # round 0: a, b; round 1: b, a (rotated); then b is over the cap
    assert result["a"]["passes"] == 4 and result["b"]["passes"] == 2
    assert result["a"]["examples_per_s"] == pytest.approx(100.0)
    assert result["b"]["labels_scored"] == 2
    assert "crashed" in result["c"]["error"]


def test_the_onnx_cache_key_follows_the_models_files(tmp_path):
    """A retrained model under the same directory name must not reuse the old model's cached ONNX export."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    first = speed_harness.onnx_cache_key(tmp_path)
    assert speed_harness.onnx_cache_key(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    second = speed_harness.onnx_cache_key(tmp_path)
    assert second != first
    (tmp_path / "gliclass_processor.json").write_text('{"max_length": 64}')
    assert speed_harness.onnx_cache_key(tmp_path) not in (first, second)
    # a changed label tokenizer (bi-encoders keep it in a sub-folder) changes what the export tokenises
    (tmp_path / "label_tokenizer").mkdir()
    (tmp_path / "label_tokenizer" / "tokenizer.json").write_text('{"v": 1}')
    third = speed_harness.onnx_cache_key(tmp_path)
    (tmp_path / "label_tokenizer" / "tokenizer.json").write_text('{"v": 2}')
    assert speed_harness.onnx_cache_key(tmp_path) != third
