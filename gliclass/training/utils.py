"""Helpers for run.py: instantiate config groups, apply the `extras`, log hyper-parameters, report results."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
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
    """The resolved run config (flattened by the loggers) and the chosen config groups (`choice/arch`, ...), with the
    final metrics under `hp/`.

    TensorBoard's HParams tab then compares sweep jobs on those metrics; the `hp/` prefix keeps these one-off points
    out of the training curves.
    """
    params = OmegaConf.to_container(cfg, resolve=True)
    if params.get("tags"):  # one readable column ("a, b"), as `log_tags` wrote it at the start
        params["tags"] = ", ".join(str(tag) for tag in params["tags"])
    choices = group_choices()
    if choices:  # the config groups this run chose (arch=uni, pooling=attn, ...): one HParams column each
        params["choice"] = choices
    hp_metrics = {f"hp/{name.replace('/', '_')}": value for name, value in metrics.items()}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=hp_metrics)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(hp_metrics)


def log_tags(loggers: list[Logger], tags: Sequence[str] | None) -> None:
    """The run's `tags` at its start, so a run that fails or is still running is findable by them: every logger's
    hyper-parameters get `tags: "a, b"` (hparams.yaml of the CSV and TensorBoard loggers) and TensorBoard a `tags`
    text summary at step 0 (its Text tab)."""
    if not tags:
        return
    joined = ", ".join(str(tag) for tag in tags)
    for logger in loggers:
        logger.log_hyperparams({"tags": joined})
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("tags", joined, global_step=0)


def group_choices() -> dict[str, str]:
    """The option chosen in each config group of this run (Hydra's runtime choices, Hydra's own groups left out);
    empty outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: str(v) for k, v in choices.items() if v is not None and not k.startswith("hydra/") and k != "hydra"}


def snapshot_weights(model: Any) -> dict[str, Any]:
    """A detached copy of every floating-point tensor of `model.state_dict()` (the starting point of a run). A tensor
    listed under several names (tied towers, `tie_encoders`) is copied once, and every name maps to that copy."""
    copies: dict[tuple, Any] = {}
    out = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            same = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
            if same not in copies:
                copies[same] = value.detach().clone()
            out[key] = copies[same]
    return out


def interpolate_weights(model: Any, start: Mapping[str, Any], alpha: float) -> None:
    """Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): every floating-point weight becomes
    `alpha * trained + (1 - alpha) * start`, in place. The architecture is unchanged, so the result saves and loads
    like any checkpoint (the official package included)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"weight-ensemble alpha must be in [0, 1], got {alpha}")
    state = model.state_dict()
    missing = [k for k, v in state.items() if v.is_floating_point() and k not in start]
    if missing:
        raise ValueError(f"the starting weights lack {len(missing)} tensors of the model, e.g. {missing[:3]}")
    seen: set[int] = set()  # tied modules (tie_encoders) list one tensor under two names: update it once
    with torch.no_grad():
        for key, value in state.items():
            if value.is_floating_point() and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                value.copy_(alpha * value + (1.0 - alpha) * start[key].to(value.device, value.dtype))


def embed_sim_metrics(
    datamodule: Any, backbone: str, prefix: str = "embed_sim", device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Macro-F1 of the embedding-similarity baseline (mean-pooled cosine of `backbone`) on the datamodule's
    evaluation datasets, the same rows the model is tested on: `{prefix}/<name>/f1_macro` and `{prefix}/f1_macro`.
    `device`: where the backbone runs (run.py passes the trainer's device, so a GPU run scores it on the GPU)."""
    from gliclass.evaluation.metrics import evaluate_scores
    from gliclass.evaluation.systems import EmbeddingSimilarity

    system = EmbeddingSimilarity(backbone, device=device)
    out = {}
    for name in datamodule.eval_names:
        examples = datamodule.eval_examples(name)
        labels = datamodule.eval_labels[name]
        multi = datamodule.eval_multi_label[name]
        scores = system.scores([ex.text for ex in examples], labels, multi)
        truth = [ex.positives for ex in examples]
        out[f"{prefix}/{name}/f1_macro"] = evaluate_scores(scores, truth, labels, multi).macro_f1
    if out:
        out[f"{prefix}/f1_macro"] = sum(out.values()) / len(out)
    return out


def zero_shot_summary(
    metrics: Mapping[str, float],
    before: str = "zeroshot_untrained",
    after: str = "test",
    baseline: str = "embed_sim",
    finetuned: str = "zeroshot_finetuned",
) -> str:
    """A table of the evaluation datasets: macro-F1 of the untrained model, of the fine-tuned weights before weight
    ensembling (when measured), of the trained (exported) model, of the embedding-similarity baseline (when
    measured) and the trained model's micro-F1. `nan`: not measured in this run."""
    rows = []
    for key, value in sorted(metrics.items(), key=lambda item: (item[0] == f"{after}/f1_macro", item[0])):
        if key.startswith(f"{after}/") and key.endswith("/f1_macro"):
            name = key[len(after) + 1 : -len("/f1_macro")] or "mean"
            untrained = metrics.get(before + key[len(after) :], float("nan"))
            tuned = metrics.get(finetuned + key[len(after) :], float("nan"))
            base = metrics.get(baseline + key[len(after) :], float("nan"))
            micro = metrics.get(key.replace("/f1_macro", "/f1_micro"), float("nan"))
            rows.append(f"  {name:<24} {untrained:>10.4f} {tuned:>10.4f} {value:>10.4f} {base:>10.4f} {micro:>10.4f}")
    if not rows:
        return ""
    header = (
        f"  {'dataset':<24} {'untrained':>10} {'fine-tuned':>10} {'trained':>10} {'embed-sim':>10} {'micro-F1':>10}"
    )
    return "zero-shot macro-F1 on the evaluation datasets:\n" + "\n".join([header, *rows])
