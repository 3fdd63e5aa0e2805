"""Text sources, token contexts, activation streams and caches (imports ``saescope.lm`` objects only by duck typing)."""
from .activations import ActivationCache, ActivationStream, harvest, hook_activations
from .text import contexts_from, iter_texts, token_contexts

__all__ = ["contexts_from", "iter_texts", "token_contexts", "ActivationStream", "ActivationCache", "harvest", "hook_activations"]
