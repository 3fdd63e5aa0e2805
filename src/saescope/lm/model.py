"""LanguageModel: a Hugging Face causal LM read and written at TransformerLens-named hook points.

The public facade. Its parts: ``loading.py`` (where a name points, from_pretrained), ``tokens.py`` (text <-> ids),
``hooks.py`` (PyTorch hooks per hook kind, interventions, early exit), ``generate.py`` (sampling and the KV-cached
loop). ``run`` stops the forward pass right after the deepest captured hook. ``generate`` applies the active
interventions at every step, prompt and generated tokens alike.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import HookError
from . import generate as _gen
from .hookpoints import Family, HookPoint, all_hook_names, parse_hook, unavailable_hooks
from .hooks import HookContext, HooksMixin, _Pass, _StopForward
from .info import ModelInfo, build_info
from .tokens import Tokens, TokensMixin

__all__ = ["LanguageModel", "ModelInfo", "HookContext", "Tokens"]


class LanguageModel(TokensMixin, HooksMixin):
    """A Hugging Face causal LM with TransformerLens hook names (``blocks.{L}.hook_resid_pre`` ...).

    Attributes: ``name``, ``info`` (ModelInfo), ``hf_model``, ``tokenizer``, ``device``, ``dtype``, ``family``;
    ``source`` ("bundled", "local", "hub", or None when built directly from an HF model object), ``is_local`` and
    ``path`` (the resolved model directory), decided once by the path rule of ``lm/loading.py``.
    """

    def __init__(self, hf_model, tokenizer, name: str, family: Family, source: str | None = None,
                 path=None):
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.family = family
        self.source = source
        self.path = path
        self.info = build_info(hf_model, tokenizer, family)
        self._layers = hf_model.get_submodule(family.layers)
        self._unavailable = unavailable_hooks(family, self._layers, name)   # {hook: reason}, e.g. MoE mlp.hook_post
        self._edits: list[tuple[HookPoint, Callable, bool]] = []
        self._pass: _Pass | None = None
        self._facts_cache: dict = {}          # id(norm module) -> NormFacts
        self._linear = False                  # inside linearized()
        pad = tokenizer.pad_token_id
        eos = self.info.eos_token_id
        self._pad_id = int(pad if pad is not None else (eos if eos is not None else 0))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str, device=None, dtype=None) -> "LanguageModel":
        """Load a hub id ("gpt2", "EleutherAI/pythia-70m"), a local HF directory, or "tiny" (the bundled model).

        Hub ids resolve through huggingface_hub's cache (offline works when cached). ``dtype`` defaults to float32.
        ``trust_remote_code`` is never enabled.
        """
        from .loading import load

        loaded = load(name_or_path, device=device, dtype=dtype)
        where = loaded.where
        return cls(loaded.hf_model, loaded.tokenizer, where.name, loaded.family, source=where.source,
                   path=where.folder)

    @property
    def is_local(self) -> bool:
        """True for the bundled model and local directories (no hub involved)."""
        return self.source in ("bundled", "local")

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    def __repr__(self) -> str:
        i = self.info
        return (f"LanguageModel({self.name!r}, family={i.family}, n_layers={i.n_layers}, d_model={i.d_model}, "
                f"device={self.device}, dtype={self.dtype})")

    # ------------------------------------------------------------------ hook names
    def hook_names(self, extended: bool = False) -> list[str]:
        """The residual and sublayer hook names of this model, in execution order; ``extended`` adds hook_embed,
        blocks.{L}.ln1/ln2.hook_normalized and ln_final.hook_normalized (valid either way)."""
        return all_hook_names(self.info.n_layers, self.info.parallel_residual, extended, self._unavailable)

    def _hook(self, name: str) -> HookPoint:
        return parse_hook(name, self.info.n_layers, self.info.parallel_residual, self._unavailable)

    def hook_width(self, hook: str) -> int:
        """Last-dim size of the activation at ``hook`` (attn.hook_z: d_head, with n_heads before it)."""
        kind = self._hook(hook).kind
        if kind == "attn.hook_z":
            return self.info.d_head
        if kind == "mlp.hook_post":
            return self.info.d_mlp
        return self.info.d_model

    def hook_layer(self, hook: str) -> int:
        """The block index of ``hook`` (hook_embed: 0, ln_final.hook_normalized: n_layers - 1)."""
        return self._hook(hook).layer

    # ------------------------------------------------------------------ running
    def _model_kwargs(self, ids, mask) -> dict:
        kw = {"input_ids": ids, "use_cache": False}
        if mask is not None:
            kw["attention_mask"] = mask
            kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return kw

    def run(self, inputs, capture: str | list[str], prepend_bos: bool | None = None, attention_mask=None,
            return_logits: bool = False, grad: bool = False) -> dict[str, torch.Tensor]:
        """Run the model and return ``{hook: activation}`` for each captured hook.

        inputs: str | list[str] | LongTensor [b, pos]. Activations are [b, pos, width] (attn.hook_z:
        [b, pos, n_heads, d_head]); a captured activation is the value after any active intervention at that hook.
        The pass stops right after the deepest captured hook unless ``return_logits`` (then "logits" [b, pos, d_vocab]
        is added). Runs under torch.no_grad() unless ``grad=True``.
        """
        names = [capture] if isinstance(capture, str) else list(capture)
        points = [self._hook(n) for n in names]
        ids, mask = self._prepare(inputs, prepend_bos, attention_mask)
        captures = {hp.name: None for hp in points}
        deepest = max(points, key=lambda hp: hp.order) if points and not return_logits else None
        state = _Pass(captures, deepest, self._positions(ids, mask), grad=grad)
        kwargs = self._model_kwargs(ids, mask)
        logits = None
        with torch.set_grad_enabled(grad), self._hooked(state, points):
            try:
                if return_logits or not points:
                    logits = self.hf_model(**kwargs).logits
                else:
                    self.hf_model.base_model(**kwargs)
            except _StopForward:
                pass
        out = dict(captures)
        if return_logits:
            out["logits"] = logits
        return out

    def __call__(self, inputs, prepend_bos: bool | None = None, attention_mask=None, grad: bool = False) -> torch.Tensor:
        """inputs -> logits [b, pos, d_vocab], with the active interventions applied."""
        ids, mask = self._prepare(inputs, prepend_bos, attention_mask)
        state = _Pass(None, None, self._positions(ids, mask), grad=grad)
        with torch.set_grad_enabled(grad), self._hooked(state):
            return self.hf_model(**self._model_kwargs(ids, mask)).logits

    # ------------------------------------------------------------------ generation
    _pick = staticmethod(_gen.pick)

    def generate(self, inputs, max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, prepend_bos: bool | None = None,
                 stop_at_eos: bool = False, return_text: bool = False) -> torch.Tensor | list[str]:
        """Generate with a KV cache; active interventions apply to the prompt pass and to every new token.

        inputs: str | list[str] | LongTensor [b, pos]. Returns LongTensor [b, pos + n_new] (prompts of unequal
        length are left-padded with the pad id) or, with ``return_text``, the decoded continuations (list[str]).
        ``temperature == 0`` or ``do_sample=False`` is greedy; sampling with ``seed`` is reproducible.
        """
        _gen.check_args(max_new_tokens, temperature, top_p)
        ids, mask = self._prepare(inputs, prepend_bos, None)
        out = _gen.generate(self, ids, mask, max_new_tokens, do_sample, temperature, top_p, seed, stop_at_eos)
        return _gen.decode_new(self, out, ids.shape[1], stop_at_eos) if return_text else out

    def linearized(self):
        """Context manager: inside it, attention patterns and every LayerNorm/RMSNorm scale (the final norm too)
        are constants for autograd, while forward values stay exactly the same (see ``lm/linearize.py``).

        For attribution graphs: with MLP outputs replaced by constants, the logits are then linear in the
        residual stream, so gradients are exact direct effects.
        """
        from .linearize import linearized

        return linearized(self)

    # ------------------------------------------------------------------ weights
    def unembed_matrix(self) -> torch.Tensor:
        """W_U [d_model, d_vocab] (a view of the output embedding)."""
        return self.hf_model.get_output_embeddings().weight.T

    def unembed_bias(self) -> torch.Tensor | None:
        """b_U [d_vocab] of the output layer, or None when it has no bias (most families)."""
        bias = getattr(self.hf_model.get_output_embeddings(), "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def final_norm(self) -> torch.nn.Module:
        """The final LayerNorm/RMSNorm, applied before W_U (for direct logit attribution and the logit lens)."""
        return self.hf_model.get_submodule(self.family.final_norm)

    @torch.no_grad()
    def attention_value_bias(self, layer: int) -> torch.Tensor:
        """The value bias every head adds to ``blocks.{layer}.attn.hook_z``, through its LayerNorm: ``[n_heads, d_head]``.

        ``b_V + ln_1.b @ W_V``: since attention probabilities sum to 1, ``z`` carries it exactly; TransformerLens's
        default processing folds it into ``b_O``, so its processed ``hook_z`` is the raw one minus this. GPT-2 only.
        """
        if self.family.name != "gpt2":
            raise HookError(f"attention_value_bias is defined for GPT-2-family models, not {self.family.name} ({self.name})")
        if not 0 <= layer < self.info.n_layers:
            raise HookError(f"layer {layer} is out of range for {self.name} ({self.info.n_layers} layers)")
        block = self._layers[layer]
        d = self.info.d_model
        bias = block.attn.c_attn.bias[2 * d:] + block.ln_1.bias @ block.attn.c_attn.weight[:, 2 * d:]
        return bias.reshape(self.info.n_heads, self.info.d_head)
