"""LLM explanations of SAE features, scored by detection and fuzzing, stored in the feature store.

    client = ChatClient("http://127.0.0.1:8000/v1", api_key_env="OPENAI_API_KEY")   # or LocalChatClient("dir")
    summary = explain_store("features.sqlite", LLMExplainer(client), judge=LLMJudge(client),
                            scorers=("detection", "fuzzing"), features=range(100))
    FeatureStore("features.sqlite").explanations(7)        # newest first, with scores
    FeatureStore("features.sqlite").search("bible verses")  # explanations and labels, ranked

Judges that plug into the same scorers: ``OracleJudge`` (true activations), ``CoinFlipJudge(seed)``,
``ConstantJudge(1.0)`` (always yes). ``TokenExplainer`` explains without an LLM (a baseline).
"""
from __future__ import annotations

from .client import ChatClient, ChatReply, ClientConfig, LLMError, Price, Usage
from .explainer import Explained, LLMExplainer, NegativePool, Split, TokenExplainer, split_examples
from .local import LocalChatClient
from .prompts import ParseError, parse_explanation, parse_probabilities
from .runner import ExplainConfig, ExplainSummary, explain_store, parse_features
from .scoring import (Context, CoinFlipJudge, ConstantJudge, LLMJudge, OracleJudge, ScoreResult, TokenMatchJudge,
                      auroc, balanced_accuracy, score)
from .search import search_features

__all__ = ["ChatClient", "ChatReply", "ClientConfig", "LLMError", "Price", "Usage", "Explained", "LLMExplainer",
           "NegativePool", "Split", "TokenExplainer", "split_examples", "LocalChatClient", "ParseError",
           "parse_explanation", "parse_probabilities", "ExplainConfig", "ExplainSummary", "explain_store",
           "parse_features", "Context", "CoinFlipJudge", "ConstantJudge", "LLMJudge", "OracleJudge", "ScoreResult",
           "TokenMatchJudge",
           "auroc", "balanced_accuracy", "score", "search_features"]
