"""SAE training: ``TrainConfig`` and ``train_sae(source, config, out_dir=None, resume=False) -> SAE``."""
from .config import ARCHITECTURES, TrainConfig
from .trainer import harvest_activations, train_from_config, train_sae

__all__ = ["TrainConfig", "train_sae", "train_from_config", "harvest_activations", "ARCHITECTURES"]
