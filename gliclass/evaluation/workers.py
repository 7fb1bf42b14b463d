"""Coordinator side of `worker.py`: start a system in its own process and talk JSON lines to it.

One process per system isolates peak memory (ru_maxrss) and lets the official package run in its own venv; the
coordinator sends one request at a time, so systems never compete for the CPU with each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
OFFICIAL_PYTHON_ENV = "GLICLASS_OFFICIAL_PYTHON"
REPO_ROOT = Path(__file__).resolve().parents[2]
# the official package's own venv, inside the repository (git-ignored); scripts/official/make_fixtures.sh creates it
OFFICIAL_VENV = ".venv-official"


def official_python(repo_root: Path = REPO_ROOT) -> str | None:
    """The official package's interpreter: $GLICLASS_OFFICIAL_PYTHON when set (an error if it does not exist),
    else `<repo>/.venv-official/bin/python` if it exists, else None (the official system is skipped)."""
    given = os.environ.get(OFFICIAL_PYTHON_ENV)
    if given:
        if not Path(given).exists():
            raise FileNotFoundError(f"${OFFICIAL_PYTHON_ENV}={given} does not exist")
        return given
    default = repo_root / OFFICIAL_VENV / "bin" / "python"
    return str(default) if default.exists() else None


class WorkerError(RuntimeError):
    """The worker died or answered a request with an error."""


class Worker:
    """A running system; `request(cmd=..., ...)` returns its JSON reply."""

    def __init__(
        self,
        system: str,
        model: str | os.PathLike,
        python: str | None = None,
        threads: int = 1,
        max_length: int = 512,
        batch_size: int = 8,
        pair_batch_size: int = 32,
    ) -> None:
        self.system = system
        python = python or sys.executable
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
        command = [
            python,
            str(WORKER_SCRIPT),
            f"--system={system}",
            f"--model={model}",
            f"--threads={threads}",
            f"--max-length={max_length}",
            f"--batch-size={batch_size}",
            f"--pair-batch-size={pair_batch_size}",
        ]
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the worker; shown on failure)
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self._log.seek(0)
            raise WorkerError(f"{self.system} worker exited with code {code}:\n{self._log.read()[-3000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"{self.system}: {reply['error']}")
        return reply

    def request(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self._log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
