from gliclass.modeling.architectures import GLiClassOutput
from gliclass.modeling.factory import build_model, resolve_backbone
from gliclass.modeling.model import GLiClassModel

__all__ = ["GLiClassModel", "GLiClassOutput", "build_model", "resolve_backbone"]
