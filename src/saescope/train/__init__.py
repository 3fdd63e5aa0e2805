"""SAE training: ``TrainConfig`` and ``train_sae(source, config, out_dir=None, resume=False) -> SAE``."""
from .config import ARCHITECTURES, TrainConfig
from .trainer import train_sae

__all__ = ["TrainConfig", "train_sae", "ARCHITECTURES"]
