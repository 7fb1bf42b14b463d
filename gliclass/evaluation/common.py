"""What every evaluation run shares: which model it ran, and a record of how it was run."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ModelSpec:
    """One `--model` of an evaluation run: the system name it is reported under, its resolved dir, and a note
    (set when the default path was absent and a fresh model stands in)."""

    name: str
    path: Path
    note: str | None = None


MODEL_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def split_model_arg(value: str) -> tuple[str | None, str]:
    """`name=path` -> (name, path); a plain path (also one whose '=' sits after a '/') -> (None, path)."""
    name, sep, path = value.partition("=")
    if not sep or "/" in name or os.sep in name:
        return None, value
    if not name or not path:
        raise SystemExit(f"--model {value!r}: expected name=path or a plain path")
    if not MODEL_NAME.fullmatch(name):
        raise SystemExit(f"--model {value!r}: name {name!r} may only hold letters, digits and _.+-")
    return name, path


def is_gliclass_dir(path: Path) -> bool:
    """A saved GLiClass model: a config.json whose model_type is GLiClass."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "GLiClass"


def resolve_models(
    values: Sequence[str] | None, reserved: Collection[str] = (), single_name: str = "ours"
) -> list[ModelSpec]:
    """The repeatable `--model [name=]path` of the evaluation CLIs, in the order given.

    A single plain path keeps the historical system name `single_name` ("ours"); with several models a plain path
    is named by its directory. A name given twice (or one in `reserved`, e.g. a baseline's), a path that does not
    exist, or a dir that is not a saved GLiClass model exits with a message naming it. The default path, when
    absent, becomes a fresh MiniLM model (see `resolve_model`)."""
    values = list(values) if values else [DEFAULT_MODEL]
    split = [split_model_arg(value) for value in values]
    specs: list[ModelSpec] = []
    seen: dict[str, str] = {}
    for value, (name, path) in zip(values, split, strict=True):
        if name is None:
            name = single_name if len(split) == 1 else (Path(path).name or Path(path).resolve().name)
        if name in reserved:
            raise SystemExit(f"--model {value!r}: name {name!r} is taken by a baseline system; pick another name")
        if name in seen:
            raise SystemExit(
                f"--model name {name!r} given twice ({seen[name]!r} and {value!r}); name them apart with name=path"
            )
        seen[name] = value
        try:
            model_dir, note = resolve_model(path)
        except FileNotFoundError:
            raise SystemExit(f"--model {value!r}: model directory {path} does not exist") from None
        if not is_gliclass_dir(model_dir):
            raise SystemExit(f"--model {value!r}: {model_dir} is not a GLiClass model dir (no GLiClass config.json)")
        specs.append(ModelSpec(name, model_dir, note))
    return specs


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


def git_commit() -> str:
    """The repository's short commit hash, with "+dirty" when the tree has uncommitted changes ("unknown" outside a
    git checkout). $GLICLASS_SOURCE_COMMIT, when set, is taken instead: a copy of a clean checkout shipped to another
    machine (scripts/gpu/cv_batch.sh sets it from .gpucarry/SOURCE, which cv_batch_prep.sh writes only from a clean
    tree), where a `.git` may be missing or stale."""
    if os.environ.get("GLICLASS_SOURCE_COMMIT"):
        return os.environ["GLICLASS_SOURCE_COMMIT"]
    if not (REPO_ROOT / ".git").exists():
        return "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_record(args: Any, module: str, models: Mapping[str, str | os.PathLike] | None = None) -> dict[str, Any]:
    """Date, command line, git commit and software versions, stored beside every result; `models` (system name
    -> resolved model dir) is recorded as given."""
    import transformers

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", module, *sys.argv[1:]]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **({"models": {name: str(path) for name, path in models.items()}} if models is not None else {}),
    }
