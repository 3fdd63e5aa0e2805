"""Which trainable module a run builds: a plain SAE (``losses``), a Matryoshka SAE (``matryoshka``) or a
transcoder (``transcoder``, when the source yields ``[x | y]`` pairs)."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .config import TRANSCODER_ARCHITECTURES, TrainConfig


def pair_mode(source, cfg: TrainConfig) -> bool:
    """True when the run trains a transcoder: ``cfg.target_hook`` is set, or the source is an ``(x, y)`` pair."""
    from pathlib import Path

    from ..data.activations import META_FILE, ActivationCache

    pair = cfg.target_hook is not None or (isinstance(source, tuple) and len(source) == 2)
    if isinstance(source, (str, Path)) and (Path(source) / META_FILE).is_file():
        source = ActivationCache.open(source)
    if isinstance(source, ActivationCache) and source.meta.get("pair_split"):
        pair = True  # a pair cache trains a transcoder, never an SAE of the concatenated rows
    if pair and cfg.architecture not in TRANSCODER_ARCHITECTURES:
        raise ConfigError(f"architecture: transcoders train as {', '.join(TRANSCODER_ARCHITECTURES)}, "
                          f"not {cfg.architecture!r}")
    return pair


def make_model(cfg: TrainConfig, d_in: int, split, generator: torch.Generator, device):
    """The trainable module of ``cfg``; ``split = (d_in, d_out)`` for a transcoder, else None."""
    if split:
        from .transcoder import TrainableTranscoder

        return TrainableTranscoder(cfg, split[0], split[1], generator, device=device)
    if cfg.architecture == "matryoshka":
        from .matryoshka import TrainableMatryoshka

        return TrainableMatryoshka(cfg, d_in, generator, device=device)
    from .losses import TrainableSAE

    return TrainableSAE(cfg, d_in, generator, device=device)
