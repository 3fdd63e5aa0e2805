"""``attach(lm, sae) -> Attachment``: an SAE (or transcoder) bound to a language model.

Everything above this layer reads features through an Attachment, so the fit check, the model conventions, the
hook adapter, the tokenisation the SAE expects and the readout are decided here once:

    att = attach(lm, sae)
    ids = att.tokens("The cat sat")                  # LongTensor [1, pos], BOS as the SAE was trained
    f = att.features(ids)                            # [1, pos, d_sae]
    for text, ids, f in att.encode_texts(texts): ...
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field

import torch

from ..errors import InputError, NumericsError
from ..progress import progress
from .adapter import Site, build_site
from .fit import check_fits
from .readout import has_readout

log = logging.getLogger(__name__)

RESIDUAL_KINDS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


@dataclass(frozen=True)
class Attachment:
    """``sae`` on ``lm``: the checked site and what follows from it. Build with ``attach``."""
    lm: object
    sae: object
    site: Site
    prepend_bos: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def hook(self) -> str:
        """The hook the encoder reads."""
        return self.site.hook

    @property
    def hook_out(self) -> str:
        """The hook the decoder writes to (a transcoder's output hook, else ``hook``)."""
        return self.site.hook_out

    @property
    def is_transcoder(self) -> bool:
        return self.sae.cfg.is_transcoder

    @property
    def conventions(self) -> tuple[str, ...]:
        return self.site.conventions

    @property
    def in_residual_basis(self) -> bool:
        """True when the decoder writes in the residual stream's basis (its directions have a logit lens and a
        direct logit effect): residual, attn_out and mlp_out hooks at full width."""
        hook = self.hook_out
        kind = hook.split(".", 2)[-1] if hook.startswith("blocks.") else hook
        return kind in RESIDUAL_KINDS and self.sae.d_out == self.lm.info.d_model

    @property
    def has_logit_lens(self) -> bool:
        """True when the decoder's directions have a logit lens: residual basis, and a final norm the readout
        knows (``saescope.site.readout``)."""
        return self.in_residual_basis and has_readout(self.lm)

    # ------------------------------------------------------------------ tokens
    def tokens(self, text: str, reserve: int = 0, truncate: bool = True, what: str = "text") -> torch.Tensor:
        """``text`` -> LongTensor ``[1, pos]`` on the model's device, tokenised as the SAE expects (its
        ``prepend_bos``). Empty text is an InputError; text longer than the context (minus ``reserve`` tokens kept
        for generation) is cut with a warning when ``truncate``, else an InputError."""
        lm = self.lm
        if not isinstance(text, str) or text == "":
            raise InputError(f"{what} is empty; give at least one character")
        ids = lm.to_tokens(text, prepend_bos=self.prepend_bos)
        ids = ids[None] if ids.dim() == 1 else ids
        n_ctx = lm.info.n_ctx
        limit = n_ctx - reserve
        if ids.shape[1] > limit:
            if not truncate or limit < 1:
                extra = f" plus {reserve} new tokens" if reserve else ""
                raise InputError(f"{what} is {ids.shape[1]} tokens{extra}, longer than the model's context of {n_ctx}; "
                                 "shorten it" + (" or lower --max-new-tokens" if reserve else ""))
            log.warning("%s is %d tokens, longer than the context of %d: keeping the first %d", what, ids.shape[1],
                        n_ctx, limit)
            ids = ids[:, :limit]
        if ids.shape[1] == 0:
            raise InputError(f"{what} produced no tokens")
        return ids.to(lm.device)

    # ------------------------------------------------------------------ features
    def sae_input(self, act: torch.Tensor) -> torch.Tensor:
        """A hook activation -> the SAE's input ``[..., d_in]`` on the SAE's device and dtype (finite-checked)."""
        check_finite(act, f"model {self.lm.name} at {self.hook}")
        return self.site.to_sae(act).to(device=self.sae.device, dtype=self.sae.dtype)

    @torch.no_grad()
    def features(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids ``[b, pos]`` -> feature activations ``[b, pos, d_sae]`` (on the SAE's device)."""
        act = self.lm.run(ids, capture=self.hook, attention_mask=attention_mask)[self.hook]
        return check_finite(self.sae.encode(self.sae_input(act)), f"the SAE on {self.hook} (feature activations)")

    def encode_texts(self, texts: list[str], batch_size: int = 16, desc: str = "reading"):
        """Yield ``(text, ids [pos], f [pos, d_sae] float32 CPU)`` per text, running the model in right-padded
        batches."""
        token_lists = [self.tokens(t)[0].cpu() for t in texts]
        for start in progress(range(0, len(texts), batch_size), desc=desc, unit="batch"):
            chunk = token_lists[start:start + batch_size]
            width = max(len(t) for t in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, t in enumerate(chunk):
                ids[row, :len(t)] = t
                mask[row, :len(t)] = 1
            dev = self.lm.device
            f = self.features(ids.to(dev), mask.to(dev) if len(chunk) > 1 else None)
            for row, t in enumerate(chunk):
                yield texts[start + row], t, f[row, :len(t)].float().cpu()

    def check_feature(self, index, what: str = "feature") -> int:
        return check_feature(self.sae, index, what)


def attach(lm, sae) -> Attachment:
    """Check that ``sae`` fits ``lm`` (one-line error otherwise) and bind them. Neither object is changed."""
    check_fits(lm, sae)
    site = build_site(lm, sae)
    notes = []
    prepend_bos = sae.cfg.metadata.prepend_bos
    if prepend_bos is None:
        prepend_bos = bool(lm.info.default_prepend_bos)
        notes.append(f"the SAE does not record prepend_bos; using the model's default ({prepend_bos})")
        log.info(notes[-1])
    if site.conventions:
        notes.append(f"model conventions applied at the hook: {', '.join(site.conventions)}")
    return Attachment(lm, sae, site, bool(prepend_bos), tuple(notes))


def check_feature(sae, index, what: str = "feature") -> int:
    """An int feature index in ``[0, d_sae)``, or an InputError naming it."""
    if isinstance(index, bool):
        raise InputError(f"{what} index must be an integer, got {index!r}")
    try:
        i = operator.index(index)
    except TypeError:
        raise InputError(f"{what} index must be an integer, got {index!r}") from None
    if not 0 <= i < sae.d_sae:
        raise InputError(f"{what} index {i} is out of range: this SAE has {sae.d_sae} features (0..{sae.d_sae - 1})")
    return i


def check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` unchanged, or a one-line NumericsError naming ``what`` when it holds NaN or inf."""
    if not bool(torch.isfinite(t).all()):
        kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
        raise NumericsError(f"{what} produced {kind}; check the model/SAE weights and dtype")
    return t


def single_token_id(lm, token) -> tuple[int, str]:
    """A token given as an id or as a string that is exactly one token -> (id, string)."""
    if isinstance(token, bool):
        raise InputError(f"token must be a string or a token id, got {token!r}")
    if isinstance(token, int):
        vocab = lm.info.d_vocab
        if not 0 <= token < vocab:
            raise InputError(f"token id {token} is out of range (vocabulary size {vocab})")
        return token, lm.to_string(torch.tensor([token]))
    if not isinstance(token, str) or token == "":
        raise InputError("token is empty; give one token, e.g. ' the'")
    ids = lm.to_tokens(token, prepend_bos=False).reshape(-1)
    if ids.numel() != 1:
        raise InputError(f"{token!r} is {ids.numel()} tokens, not one: {lm.to_str_tokens(ids)}; give a single token "
                         "(mind the leading space)")
    return int(ids[0]), token
