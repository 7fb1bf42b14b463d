"""Resuming runs: each sweep its own directory, a checkpoint resumed only by the config that wrote it, and a SLURM
preemption or time-limit signal that saves the running step and requeues the job.

- `${gliclass.sweep_dir:${run_name},${hydra.overrides.task}}` (conf/hydra/default.yaml) names a multirun's
  directory: `run_name` when the run has one, else `default/<its overrides>-<hash>`, so two different un-named sweeps
  never share job directories. The value is computed once, from the sweep's overrides in the process that launches
  it, and kept in the config's resolver cache (keyed by the interpolation's text), which Hydra copies into every
  job's config (whose own `hydra.overrides.task` are the job's) and submitit pickles with the job: a job requeued by
  SLURM finds the same directory. It depends only on the command's overrides, so rerunning the command (a plain
  `sbatch` requeue does) finds it too.
- `run_config(cfg)`: the parts of a config that decide what a fit trains (model, data, loss, module, optimiser, seed,
  init_from). Every checkpoint holds it (`RunConfigRecord`, gliclass/training/callbacks.py), and `resolve_ckpt_path`
  resumes only a checkpoint whose record equals this run's: `ckpt_path=auto` (the default) resumes this run's
  last.ckpt when it matches and otherwise starts fresh, saying which fields differ; `ckpt_path=last` or a path
  refuses a mismatch with an error naming them; null always starts fresh.
- `PREEMPTION`: SIGUSR1, SIGUSR2 and SIGTERM only set a flag. `SaveOnPreemption` (callbacks.py) acts on it at the end
  of the running training step: all processes agree, last.ckpt is written at that step, and `Preempted` stops the
  run. run.py then marks result.json `preempted` and `exit_after_preemption` requeues the job (submitit's own handler
  under `hydra/launcher=submitit_*`, `scontrol requeue` under plain sbatch) and exits with 128 + the signal number.
  The requeued job runs the same command in the same directory and `ckpt_path=auto` resumes it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

DEFAULT_RUN_NAME = "default"
# overrides that say how to run a sweep, not which sweep it is: `ckpt_path=last` added to a rerun resumes the same jobs
SWEEP_DIR_IGNORED = ("ckpt_path",)

# ---------------------------------------------------------------------------------------------- sweep directories


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweep_name(run_name: str, overrides: Sequence[str]) -> str:
    """The directory of a multirun below `<log dir>/<task>/multiruns/`: the run name when the run has one (an
    experiment's or `run_name=...`), else `default/<overrides>-<hash of the overrides>`."""
    if str(run_name) != DEFAULT_RUN_NAME:
        return str(run_name)
    kept = [str(o) for o in overrides if _key(str(o)) not in SWEEP_DIR_IGNORED]
    digest = hashlib.sha1("\n".join(kept).encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9=,.+_-]+", "-", "_".join(kept)).strip("-_.")[:80] or "no-overrides"
    return f"{DEFAULT_RUN_NAME}/{readable}-{digest}"


def _sweep_dir(run_name: str, overrides: Sequence[str] = ()) -> str:
    return sweep_name(run_name, [str(o) for o in overrides])


# cached: resolved once where the sweep is launched (from the sweep's overrides), then copied into each job's config
OmegaConf.register_new_resolver("gliclass.sweep_dir", _sweep_dir, use_cache=True, replace=True)

# ---------------------------------------------------------------------------------------------- run config

RUN_CONFIG_KEY = "gliclass_run_config"
RUN_CONFIG_SECTIONS = ("model", "data", "loss", "module", "optim", "seed", "init_from")
# how the run loads data or computes, not what it trains: free to differ between a run and its resumption
UNCHECKED_FIELDS = (
    "data.num_workers",
    "data.eval_batch_size",
    "data.data_dir",
    "model.compile",
    "model.gradient_checkpointing",
    "model.attn_implementation",
)


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config sections that decide what a fit trains (JSON values), without `UNCHECKED_FIELDS`."""
    out: dict[str, Any] = {}
    for section in RUN_CONFIG_SECTIONS:
        if section in cfg:
            value = cfg[section]
            out[section] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    out = json.loads(json.dumps(out, sort_keys=True, default=str))
    for field in UNCHECKED_FIELDS:
        *parents, name = field.split(".")
        node = out
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(name, None)
    return out


_MISSING = "<not set>"


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """`field: saved -> current` for every field that differs (nested mappings compared key by key)."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key, _MISSING), current.get(key, _MISSING)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {_short(old)} -> {_short(new)}")
    return out


def _short(value: Any) -> str:
    text = value if value == _MISSING else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def saved_run_config(path: str | Path) -> dict[str, Any] | None:
    """The run config a checkpoint was written with (None: it holds none, written before checkpoints did)."""
    try:  # memory-mapped: the tensors are not read
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # not a zip checkpoint
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint.get(RUN_CONFIG_KEY)


def resumed_step(ckpt_path: str | None) -> int:
    """The optimiser step a fit resumed from `ckpt_path` starts at (0 when it starts fresh or the path is not a file,
    such as Lightning's "hpc")."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return 0
    return int(torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))


class CheckpointConfigMismatch(ValueError):
    """A checkpoint asked to resume was written by a run with another config."""


def mismatch_message(path: str | Path, differences: Sequence[str]) -> str:
    shown = "; ".join(differences[:12]) + (f"; and {len(differences) - 12} more" if len(differences) > 12 else "")
    return (
        f"{path} was written by a run with a different config ({len(differences)} field(s) differ, checkpoint -> "
        f"this run: {shown}). Resuming it would continue that run under this run's name. Resume it with its own "
        "config, give this run its own directory (run_name=...), or start fresh here (ckpt_path=null)"
    )


def set_aside(path: Path) -> Path:
    """Rename a checkpoint that a fresh run would overwrite to `<stem>-superseded-<UTC time>.ckpt` beside it, so no
    training progress is lost (`ckpt_path=<that file>` still resumes it)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = path.with_name(f"{path.stem}-superseded-{stamp}{path.suffix}")
    path.rename(target)
    return target


def resolve_ckpt_path(value: str | None, last: Path | None, current: Mapping[str, Any], fit: bool = True) -> str | None:
    """What `trainer.fit` (or, with `fit=False`, `trainer.test`) gets as `ckpt_path` for the configured `value`.

    - None: start fresh.
    - "auto": resume this run's `last` when it exists and was written with this config (`current`, see
      `run_config`); otherwise start fresh, logging why. Only for a fit: a test-only run tests the model it builds.
    - "last": `last` when it exists (else fresh, as Lightning does), refused when its config differs.
    - a path: that checkpoint, refused when its config differs (a test-only run may test any checkpoint).
    - "best", "hpc", "registry...": passed on to Lightning unchecked.
    """
    if value is None or str(value).lower() in ("null", "none"):
        return None
    value = str(value)
    if value == "auto":
        if not fit or last is None or not last.is_file():
            return None
        saved = saved_run_config(last)
        if saved is None:
            kept = set_aside(last)
            log.warning("not resuming %s: it holds no record of its run's config (kept as %s)", last, kept)
            return None
        differences = config_differences(saved, current)
        if differences:
            kept = set_aside(last)
            log.warning(
                "not resuming %s, starting fresh (kept as %s): %s", last, kept, mismatch_message(last, differences)
            )
            return None
        log.info("resuming %s (same model, data and loss config)", last)
        return str(last)
    if value == "last":
        if last is None or not last.is_file():
            log.warning("ckpt_path=last: %s does not exist yet, so the run starts fresh", last)
            return None
        path = last
    elif value in ("best", "hpc") or value.startswith("registry"):
        return value
    else:
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={value!r}: no such checkpoint file (or auto, last, null)")
    if fit:
        saved = saved_run_config(path)
        if saved is None:
            log.warning("%s holds no record of its run's config: resuming it unchecked", path)
        elif differences := config_differences(saved, current):
            raise CheckpointConfigMismatch(mismatch_message(path, differences))
    return str(path)


# ---------------------------------------------------------------------------------------------- preemption

PREEMPTION_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")


class Preempted(Exception):
    """The run stopped for a preemption or time-limit signal; last.ckpt holds its last finished step."""

    def __init__(self, signum: int, step: int | None = None) -> None:
        self.signum, self.step = signum, step
        where = f" after step {step}, saved to last.ckpt" if step is not None else ""
        super().__init__(f"stopped by {signal.Signals(signum).name} (signal {signum}){where}")


def preemption_signal(error: BaseException) -> int | None:
    """The signal a run was stopped by, for `Preempted` raised here or in a spawned DDP process (whose traceback the
    launching process receives as text)."""
    if isinstance(error, Preempted):
        return error.signum
    match = re.search(r"Preempted: stopped by \w+ \(signal (\d+)\)", str(error))
    return int(match.group(1)) if match else None


class PreemptionFlag:
    """Process-wide record of the first preemption signal. The handlers only set it (no work inside a signal
    handler); the training loop acts on it at the end of the running step (`SaveOnPreemption`)."""

    def __init__(self, signals: Sequence[str] = PREEMPTION_SIGNALS) -> None:
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self.pid: int | None = None

    @property
    def installed(self) -> bool:
        return self.pid == os.getpid()

    def install(self) -> bool:
        """Handle the signals in this process (False: already handled here, or not the main thread)."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return False
        self.previous = {signum: signal.getsignal(signum) for signum in self.signals}
        for signum in self.signals:
            signal.signal(signum, self._handle)
        self.pid, self.signum = os.getpid(), None
        return True

    def reassert(self) -> None:
        """Handle the signals again where another handler replaced this one (Lightning's SIGTERM handler, which
        would otherwise end the run at the next step without saving it)."""
        if not self.installed or threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            if signal.getsignal(signum) != self._handle:
                signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        if not self.installed or threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.pid = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    def agreed(self, trainer: Any = None) -> int | None:
        """The signal any process of the run received (the largest number, so all act alike), else None. Under
        DDP every process must call this at the same point: it is a collective."""
        received = self.signum or 0
        if trainer is not None and trainer.world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                value = torch.tensor([received], device=trainer.strategy.root_device)
                dist.all_reduce(value, op=dist.ReduceOp.MAX)
                received = int(value.item())
        return received or None

    def check(self, trainer: Any = None) -> None:
        """Stop the run here (`Preempted`) if a preemption signal arrived: between the phases of run.py."""
        signum = self.agreed(trainer)
        if signum is not None:
            raise Preempted(signum)

    def __reduce__(self) -> str | tuple:
        # the process-wide flag stays itself in a spawned DDP process (its handlers are not picklable anyway)
        if self is PREEMPTION:
            return "PREEMPTION"
        return (PreemptionFlag, (tuple(signal.Signals(s).name for s in self.signals),))

    @contextmanager
    def handling(self) -> Iterator[None]:
        """Handle the signals inside the block (nested blocks leave it to the outermost)."""
        installed = self.install()
        try:
            yield
        finally:
            if installed:
                self.uninstall()


PREEMPTION = PreemptionFlag()


def slurm_job_id() -> str | None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def exit_after_preemption(signum: int, is_global_zero: bool, flag: PreemptionFlag = PREEMPTION) -> NoReturn:
    """Requeue the job where someone can, then exit with 128 + `signum` (a shell's code for "ended by signum").

    - Under submitit (`hydra/launcher=submitit_slurm`): submitit's own handler of the signal. On its time-limit
      signal (SIGUSR2) it resubmits the same Hydra job (same job directory) with `scontrol requeue` and exits; on
      SIGTERM it only logs (SLURM requeues a preempted `--requeue` job itself).
    - Under plain sbatch, for SIGUSR1/SIGUSR2 (`#SBATCH --signal=USR1@120`): `scontrol requeue $SLURM_JOB_ID` from
      rank 0. Never for SIGTERM, which is also how `scancel` ends a job.
    - Elsewhere nothing: run the same command again to resume.
    """
    previous = flag.previous.get(signum)
    flag.uninstall()
    if os.environ.get("SUBMITIT_EXECUTOR") and callable(previous):
        log.info("preempted by %s: handing over to submitit's handler", signal.Signals(signum).name)
        previous(signum, None)  # requeues and exits on rank 0 of a checkpointable job
    elif slurm_job_id() and signum != signal.SIGTERM and is_global_zero:
        job = slurm_job_id()
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            if result.returncode == 0:
                log.info("requeued SLURM job %s", job)
            else:
                log.warning("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning("could not requeue SLURM job %s: %s", job, err)
    raise SystemExit(128 + int(signum))
