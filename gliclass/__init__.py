"""GLiClass: zero-shot and few-shot text classification with a label-conditioned encoder."""

from transformers import AutoConfig, AutoModel

import gliclass.resolvers  # noqa: F401  (the configs' ${gliclass.*:} resolvers)
from gliclass.config import GLiClassConfig
from gliclass.modeling import GLiClassModel, GLiClassOutput, build_model, resolve_backbone
from gliclass.processing import GLiClassProcessor, LabelBudgetError, ReservedTokenError

AutoConfig.register("GLiClass", GLiClassConfig, exist_ok=True)
AutoModel.register(GLiClassConfig, GLiClassModel, exist_ok=True)

__all__ = [
    "GLiClassConfig",
    "GLiClassModel",
    "GLiClassOutput",
    "GLiClassProcessor",
    "LabelBudgetError",
    "ReservedTokenError",
    "build_model",
    "resolve_backbone",
]
