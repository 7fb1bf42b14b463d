"""OmegaConf resolvers the Hydra configs use (registered when `gliclass` is imported).

- `${gliclass.loader_workers:}`: DataLoader worker processes for this job. Under SLURM, the CPUs the job was given
  (`SLURM_CPUS_PER_TASK`, set from `hydra.launcher.cpus_per_task`) minus one for the training process itself;
  elsewhere 0 (data loading in the main process, as on a small CPU machine). `data.num_workers=N` overrides it.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

SLURM_CPUS = "SLURM_CPUS_PER_TASK"


def loader_workers() -> int:
    value = os.environ.get(SLURM_CPUS, "").strip()
    if not value:
        return 0
    try:
        cpus = int(value)
    except ValueError:
        raise ValueError(
            f"{SLURM_CPUS}={value!r} is not a whole number of CPUs; set data.num_workers explicitly"
        ) from None
    return max(cpus - 1, 0)


def register() -> None:
    """Idempotent; not cached, so a config resolved in a SLURM job reads that job's environment."""
    OmegaConf.register_new_resolver("gliclass.loader_workers", loader_workers, replace=True)


register()
