"""What every evaluation run shares: which model it ran, and a record of how it was run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "models/default"
CACHE_DIR = REPO_ROOT / "experiments" / ".cache"
FRESH_NOTE = (
    "models/default is absent: a FRESH gliclass.build_model('minilm') (pretrained MiniLM backbone, untrained "
    "GLiClass head, seed 0) was used, so GLiClass scores are near chance and only the harness is exercised"
)


def resolve_model(path: str | os.PathLike, architecture: str = "uni-encoder") -> tuple[Path, str | None]:
    """An existing model dir as is; the default path, when absent, becomes a fresh MiniLM model saved under
    experiments/.cache (returned with a note for the outputs). Any other missing path is an error."""
    given = Path(path)
    candidate = given if given.is_absolute() else REPO_ROOT / given
    if candidate.is_dir():
        return candidate, None
    if str(path) != DEFAULT_MODEL:
        raise FileNotFoundError(f"model directory {path} does not exist")
    return fresh_minilm(architecture), FRESH_NOTE if architecture == "uni-encoder" else None


def fresh_minilm(architecture: str = "uni-encoder") -> Path:
    """A seeded fresh MiniLM GLiClass model of `architecture`, built once and reused from the cache."""
    from gliclass import build_model

    out = CACHE_DIR / f"minilm-fresh-{architecture}"
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        model, processor = build_model("minilm", architecture_type=architecture)
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return out


def run_record(args: Any, module: str) -> dict[str, Any]:
    """Date, command line, git commit and software versions, stored beside every result."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    import transformers

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", module, *sys.argv[1:]]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "git_commit": commit + ("+dirty" if dirty else ""),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
