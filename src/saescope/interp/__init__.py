"""Reading, steering and attribution with SAE features (the "use" layer). Models and SAEs meet only through
the attach layer (``saescope.site``).

    from saescope.interp import read_features, generate_steered, Intervention
    [r] = read_features(lm, sae, "The cat sat", top_k=5)
    res = generate_steered(lm, sae, "I think", [Intervention(123, "add", 8.0)], seed=0)
"""
from __future__ import annotations

from ..site import check_feature, check_fits, load_labels
from .attribute import Attribution, FeatureAttribution, direct_logit_attribution, gradient_attribution
from .feature import FeatureInfo, TokenScore, feature_info, logit_lens, neuronpedia_url
from .read import (FeatureActivation, ReadResult, TokenFeatureStats, TokenRow, Trace, feature_trace,
                   features_on_token, read_features)
from .steer import (Intervention, SteeringHook, SteerResult, build_interventions, generate_steered, parse_algebra,
                    steer)

__all__ = [
    "Attribution", "FeatureActivation", "FeatureAttribution", "FeatureInfo", "Intervention", "ReadResult",
    "SteerResult", "SteeringHook", "TokenFeatureStats", "build_interventions", "TokenRow", "TokenScore", "Trace", "check_feature",
    "check_fits", "direct_logit_attribution", "feature_info", "feature_trace", "features_on_token",
    "generate_steered", "gradient_attribution", "load_labels", "logit_lens", "neuronpedia_url", "parse_algebra",
    "read_features", "steer",
]
