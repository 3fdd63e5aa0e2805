"""DeepSeek-R1-Distill-Llama-8B SAE (``qresearch/DeepSeek-R1-Distill-Llama-8B-SAE-l{L}``): one ``.pt`` state dict of
``encoder`` and ``decoder`` (see ``relu_state_dict``)."""
from __future__ import annotations

from .relu_state_dict import files, reader

read = reader("encoder", "decoder", r"-l(\d+)\.pt$", "deepseek_r1")
__all__ = ["files", "read"]
