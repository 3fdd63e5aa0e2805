"""The attach layer: how an SAE or transcoder sits on a language model.

It is the only place that joins ``saescope.sae`` (SAE math, formats) and ``saescope.lm`` (Hugging Face models,
hook points): the fit check, the model conventions, the hook <-> SAE adapter, tokens -> features, the
family-aware readout and the one logit lens, the identity of derived artefacts, and labels. ``interp``,
``evals``, ``report``, ``train`` and ``server`` use it and keep no private copy.
"""
from __future__ import annotations

from .adapter import Convention, Port, Site, model_conventions
from .attach import Attachment, attach, check_feature, check_finite, single_token_id
from .fit import canonical_model_name, check_fits, flat_width, same_model, sae_widths
from .identity import check_artifact, describe, fingerprint, sae_name
from .labels import LABELS_FILE, load_labels
from .readout import LENS, LensTopK, Readout, lens_rank, logit_lens

__all__ = [
    "Attachment", "Convention", "LABELS_FILE", "LENS", "LensTopK", "Port", "Readout", "Site", "attach",
    "canonical_model_name", "check_artifact", "check_feature", "check_finite", "check_fits", "describe",
    "fingerprint", "flat_width", "lens_rank", "load_labels", "logit_lens", "model_conventions", "sae_name", "sae_widths",
    "same_model", "single_token_id",
]
