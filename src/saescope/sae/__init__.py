"""The math layer: SAE config and module, input transforms, checkpoint formats, pretrained registry.

Never imports ``saescope.lm``: an SAE carries its model/hook metadata as plain data.
"""
from .config import SAEConfig, SAEMetadata
from .model import SAE, SparseCode
from .transforms import TransformState

__all__ = ["SAE", "SAEConfig", "SAEMetadata", "SparseCode", "TransformState"]
