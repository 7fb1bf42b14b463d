"""Helpers for run.py: instantiate config groups, apply the `extras`, log hyper-parameters, report results."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def instantiate_all(node: DictConfig | None) -> list[Any]:
    """Every `_target_` entry of a group such as `callbacks` or `logger` (a null group gives an empty list)."""
    if not node:
        return []
    return [instantiate(entry) for entry in node.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        log.info("run config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))


def log_hyperparameters(loggers: list[Logger], cfg: DictConfig, metrics: Mapping[str, float]) -> None:
    """The resolved run config (flattened by the loggers) with the final metrics under `hp/`.

    TensorBoard's HParams tab then compares sweep jobs on those metrics; the `hp/` prefix keeps these one-off points
    out of the training curves.
    """
    params = OmegaConf.to_container(cfg, resolve=True)
    hp_metrics = {f"hp/{name.replace('/', '_')}": value for name, value in metrics.items()}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=hp_metrics)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(hp_metrics)


def zero_shot_summary(metrics: Mapping[str, float], before: str = "zeroshot_untrained", after: str = "test") -> str:
    """A table of the evaluation datasets: macro-F1 of the untrained model, after training, and micro-F1 after."""
    rows = []
    for key, value in sorted(metrics.items()):
        if key.startswith(f"{after}/") and key.endswith("/f1_macro"):
            name = key[len(after) + 1 : -len("/f1_macro")] or "mean"
            untrained = metrics.get(before + key[len(after) :], float("nan"))
            micro = metrics.get(key.replace("/f1_macro", "/f1_micro"), float("nan"))
            rows.append(f"  {name:<24} {untrained:>10.4f} {value:>10.4f} {micro:>10.4f}")
    if not rows:
        return ""
    header = f"  {'dataset':<24} {'untrained':>10} {'trained':>10} {'micro-F1':>10}"
    return "zero-shot macro-F1 on the evaluation datasets:\n" + "\n".join([header, *rows])
