"""The official package's venv lives at `<repo>/.venv-official` (where scripts/official/make_fixtures.sh puts it),
and the evaluation worker runs from there even though that venv sits inside the repository it hides."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gliclass.evaluation import workers
from gliclass.evaluation.workers import OFFICIAL_PYTHON_ENV, REPO_ROOT, Worker, official_python

FIXTURE = Path(__file__).parent / "fixtures" / "official" / "uni_bert_first_simple"


def _fake_python(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    path.write_text("")
    return path


def test_official_python_is_the_venv_inside_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv(OFFICIAL_PYTHON_ENV, raising=False)
    repo = tmp_path / "repo"
    _fake_python(tmp_path / "offvenv" / "venv" / "bin" / "python")  # the old default beside the repo: not used
    assert official_python(repo) is None
    venv_python = _fake_python(repo / ".venv-official" / "bin" / "python")
    assert official_python(repo) == str(venv_python)
    elsewhere = _fake_python(tmp_path / "other" / "python")
    monkeypatch.setenv(OFFICIAL_PYTHON_ENV, str(elsewhere))
    assert official_python(repo) == str(elsewhere)
    monkeypatch.setenv(OFFICIAL_PYTHON_ENV, str(tmp_path / "missing" / "python"))
    with pytest.raises(FileNotFoundError, match=r"\$GLICLASS_OFFICIAL_PYTHON=.*missing/python does not exist"):
        official_python(repo)


# stand-ins for the official venv's packages: enough for worker.py's official system to load and answer
FAKE_PACKAGES = {
    "torch": """
import contextlib
def set_num_threads(n): pass
def set_num_interop_threads(n): pass
def inference_mode(): return contextlib.nullcontext()
""",
    "numpy": "",
    "transformers": """
class AutoTokenizer:
    @classmethod
    def from_pretrained(cls, path): return cls()
    def convert_tokens_to_ids(self, token): return 7
    def __call__(self, text, **kwargs): return {"input_ids": [7] * text.count("<<LABEL>>") + [1]}
""",
    "gliclass": """
OFFICIAL_STAND_IN = True
class GLiClassModel:
    @classmethod
    def from_pretrained(cls, path): return cls()
    def eval(self): return self
class ZeroShotClassificationPipeline:
    def __init__(self, model, tokenizer, **kwargs): pass
    def __call__(self, texts, labels, **kwargs): return [[] for _ in texts]
""",
}


def _fake_checkout(root: Path) -> Path:
    """A repository with this worker script, a `gliclass` of its own that must never be imported by the official
    system, and an official venv at <repo>/.venv-official holding stand-in packages. Returns the worker script."""
    script = root / "gliclass" / "evaluation" / "worker.py"
    script.parent.mkdir(parents=True)
    shutil.copy(workers.WORKER_SCRIPT, script)
    (root / "gliclass" / "__init__.py").write_text("raise ImportError('imported the repository gliclass')\n")
    venv = root / workers.OFFICIAL_VENV
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    for name, code in FAKE_PACKAGES.items():
        (Path(site) / name).mkdir()
        (Path(site) / name / "__init__.py").write_text(code)
    return script


def test_official_worker_runs_from_the_venv_inside_the_repository(tmp_path, monkeypatch):
    """The worker strips the repository from sys.path for the official system, but not the venv it runs in:
    stripping that too failed with `No module named 'torch'`."""
    monkeypatch.delenv(OFFICIAL_PYTHON_ENV, raising=False)
    repo = tmp_path / "repo"
    monkeypatch.setattr(workers, "WORKER_SCRIPT", _fake_checkout(repo))
    python = official_python(repo)
    assert python == str(repo / ".venv-official" / "bin" / "python")
    with Worker("official", tmp_path / "model", python=python) as worker:
        assert worker.info["ready"] and worker.info["backend"] == "official"
        reply = worker.request(cmd="time", texts=["a text"], labels=["x", "y", "z"], passes=1, warmup=0)
        assert reply["labels_scored"] == 3  # counted by the stand-in tokenizer of the venv's `transformers`


def _official_venv_ready() -> bool:
    python = REPO_ROOT / workers.OFFICIAL_VENV / "bin" / "python"
    if not python.exists():
        return False
    return subprocess.run([str(python), "-c", "import gliclass, torch"], capture_output=True).returncode == 0


@pytest.mark.slow  # ~11 s: torch, transformers and the official package load in the worker
@pytest.mark.skipif(not _official_venv_ready(), reason="no official venv at <repo>/.venv-official")
def test_the_real_official_venv_scores_like_the_fixture(monkeypatch):
    """The venv that scripts/official/make_fixtures.sh made, found without any setting, scores the official
    fixture as the official package did when it wrote the fixture."""
    monkeypatch.delenv(OFFICIAL_PYTHON_ENV, raising=False)
    assert official_python() == str(REPO_ROOT / ".venv-official" / "bin" / "python")
    expected = json.loads((FIXTURE / "expected.json").read_text())
    texts, labels = expected["texts"], expected["labels"][0]
    want = [[row[label] for label in labels] for row in expected["pipeline_all_scores"]]
    with Worker("official", FIXTURE, python=official_python()) as worker:
        got = worker.request(cmd="scores", texts=texts, labels=labels, multi_label=True)["scores"]
    assert len(got) == len(want)
    for got_row, want_row in zip(got, want, strict=True):
        assert got_row == pytest.approx(want_row, abs=1e-5)
