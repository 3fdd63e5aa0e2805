"""saescope: sparse autoencoders on language models.

The public API, imported lazily so that ``import saescope`` stays cheap:

    from saescope import LanguageModel, SAE
    lm = LanguageModel.from_pretrained("tiny")          # or "gpt2", a local directory, any HF causal LM
    sae = SAE.from_spec("tiny:resid2-topk")              # or "gpt2-small-res-jb:blocks.6.hook_resid_pre", a path
    acts = lm.run("The cat sat", capture=[sae.cfg.metadata.hook_name])
"""
from __future__ import annotations

import importlib

from ._version import __version__
from .errors import SaescopeError

_EXPORTS = {
    "LanguageModel": "saescope.lm",
    "SAE": "saescope.sae",
    "SAEConfig": "saescope.sae",
    "SAEMetadata": "saescope.sae",
    "TrainConfig": "saescope.train",
    "train_sae": "saescope.train",
    "evaluate_sae": "saescope.evals",
    "read_features": "saescope.interp",
    "feature_trace": "saescope.interp",
    "steer": "saescope.interp",
    "generate_steered": "saescope.interp",
    "direct_logit_attribution": "saescope.interp",
    "gradient_attribution": "saescope.interp",
    "feature_info": "saescope.interp",
}

__all__ = ["__version__", "SaescopeError", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'saescope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
