"""Goodfire Llama SAEs (``Goodfire/Llama-3.x-*-SAE-l{L}``): one ``.pt``/``.pth`` state dict of ``encoder_linear`` and
``decoder_linear`` (see ``relu_state_dict``)."""
from __future__ import annotations

from .relu_state_dict import files, reader

read = reader("encoder_linear", "decoder_linear", r"-l(\d+)\.pth?$", "goodfire")
__all__ = ["files", "read"]
