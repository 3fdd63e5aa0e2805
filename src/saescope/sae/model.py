"""The SAE module. With ``T`` the input transform (``transforms.py``) and ``x`` a raw activation:

    x'   = T(x) - b_dec * apply_b_dec_to_input                        [..., d_in]
    pre  = x' @ W_enc + b_enc                                         [..., d_sae]
    f    = relu(pre)                                  (relu)
         = relu(topk_k(pre))   others set to 0        (topk)
         = relu(pre) * 1[pre > threshold]             (jumprelu; batchtopk at inference, see below)
         = 1[x' @ W_enc + b_gate > 0] * relu(x' @ (W_enc * exp(r_mag)) + b_mag)      (gated)
    x_hat = T^-1(f @ W_dec + b_dec)                                   [..., d_in]

A **transcoder** (``cfg.d_out`` set) has the same encoder, but its decoder predicts another activation
``y`` (``metadata.hook_name_out``) of width ``d_out``, with an optional linear skip path (``cfg.skip``):

    y_hat = f @ W_dec + b_dec  (+ x @ W_skip.T)                       [..., d_out]

BatchTopK is trained with a batch-level top-k; at inference it is a JumpReLU with the threshold learned in
training (as SAELens and dictionary_learning do), so its output for a token does not depend on the batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from . import kernels, transforms
from .config import SAEConfig
from .transforms import TransformState

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    return name if isinstance(name, torch.dtype) else _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


def param_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The tensors an SAE of this config holds, SAELens names and shapes."""
    d_out = cfg.out_width
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, d_out), "b_dec": (d_out,)}
    if cfg.skip:
        shapes["W_skip"] = (d_out, cfg.d_in)
    if cfg.architecture == "gated":
        shapes.update(b_gate=(cfg.d_sae,), b_mag=(cfg.d_sae,), r_mag=(cfg.d_sae,))
    else:
        shapes["b_enc"] = (cfg.d_sae,)
    if cfg.architecture in ("jumprelu", "batchtopk"):
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


class SparseCode(NamedTuple):
    """A TopK code: ``values [..., k]`` at ``indices [..., k]``, plus the transform state of the input."""

    values: Tensor
    indices: Tensor
    state: TransformState


class SAE(nn.Module):
    """A sparse autoencoder. Parameters use SAELens names: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
    ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (+ ``threshold`` for jumprelu/batchtopk, ``b_gate``, ``b_mag``,
    ``r_mag`` instead of ``b_enc`` for gated). Transcoders: ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``
    (+ ``W_skip [d_out, d_in]``)."""

    def __init__(self, cfg: SAEConfig, device=None, dtype=None, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        self.path: Path | None = None
        self.log_sparsity: Tensor | None = None
        dtype = torch_dtype(dtype or cfg.dtype)
        if str(device) == "meta":  # shapes only; from_state_dict assigns the tensors
            for name, shape in param_shapes(cfg).items():
                self.register_parameter(name, nn.Parameter(torch.empty(shape, device="meta", dtype=dtype)))
            return
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        W_dec = torch.randn(cfg.d_sae, cfg.out_width, generator=gen)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)  # unit decoder rows, tied encoder: a usable start for training
        if cfg.is_transcoder:  # in and out spaces differ: an independent unit-norm encoder
            W_enc = torch.randn(cfg.d_in, cfg.d_sae, generator=gen)
            W_enc /= W_enc.norm(dim=0, keepdim=True)
        else:
            W_enc = W_dec.T.clone()
        for name, shape in param_shapes(cfg).items():
            if name == "W_dec":
                value = W_dec
            elif name == "W_enc":
                value = W_enc
            else:
                value = torch.zeros(shape)
            self.register_parameter(name, nn.Parameter(value.to(device=device, dtype=dtype)))

    # ---- properties -------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Width of the decoder's output (``d_in`` for an SAE)."""
        return self.cfg.out_width

    @property
    def is_transcoder(self) -> bool:
        return self.cfg.is_transcoder

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    def __repr__(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.architecture == "topk" else ""
        if c.is_transcoder:
            return (f"Transcoder({c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.d_out}{k}, "
                    f"skip={c.skip}, hook={c.metadata.hook_name} -> {c.metadata.hook_name_out}, "
                    f"model={c.metadata.model_name})")
        return (f"SAE({c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}{k}, transform={c.input_transform}, "
                f"hook={c.metadata.hook_name}, model={c.metadata.model_name})")

    # ---- encode / decode ----------------------------------------------------------------------------
    @property
    def _half(self) -> bool:
        return self.dtype in (torch.float16, torch.bfloat16)

    def _prepare(self, x: Tensor) -> tuple[Tensor, TransformState]:
        """Raw activation -> encoder input: ``[..., d_in]`` (or ``[..., n_heads, d_head]``) -> ``[..., d_in]``.
        A half-precision SAE prepares its input in float32 (transform, ``- b_dec``), see ``_activate``."""
        x = x.to(torch.float32 if self._half else self.dtype)
        shape = None
        if x.shape[-1] != self.d_in:
            if x.ndim >= 2 and x.shape[-2] * x.shape[-1] == self.d_in:  # hook_z: concatenate the heads
                shape = tuple(x.shape[-2:])
                x = x.flatten(-2)
            else:
                raise InputError(f"activation has last dimension {x.shape[-1]}, but the SAE expects d_in={self.d_in} "
                                 f"(hook {self.cfg.metadata.hook_name}); use the SAE's hook and model")
        x, state = transforms.apply(self.cfg.input_transform, x, self.cfg.input_scale)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec.to(x.dtype)
        return x, state._replace(shape=shape)

    def _activate(self, x: Tensor) -> Tensor:
        """Encoder input to features: ``[..., d_in] -> [..., d_sae]``. A half-precision SAE computes its input
        and the pre-activations it selects on (TopK, JumpReLU/BatchTopK thresholds, gates) in float32, so the
        selected latents are those of a float32 SAE with the same weights; features are returned in its dtype."""
        arch = self.cfg.architecture
        half = self._half
        if arch == "relu":
            if half:
                return kernels.linear_fp32(x, self.W_enc, self.b_enc).relu_().to(self.dtype)
            return kernels.linear(x, self.W_enc, self.b_enc).relu_()  # in place: addmm's backward does not need it
        if arch == "gated":
            proj = kernels.linear_fp32(x, self.W_enc, None) if half else kernels.linear(x, self.W_enc, None)
            gate = (proj + self.b_gate.to(proj.dtype)) > 0
            mag = torch.relu(proj * self.r_mag.to(proj.dtype).exp() + self.b_mag.to(proj.dtype))
            return (gate.to(proj.dtype) * mag).to(self.dtype)
        pre = kernels.linear_fp32(x, self.W_enc, self.b_enc) if half else kernels.linear(x, self.W_enc, self.b_enc)
        if arch == "topk":
            values, indices = kernels.topk_relu(pre, self.cfg.k)
            return kernels.scatter_dense(values.to(self.dtype), indices, self.d_sae)
        threshold = self.threshold.to(pre.dtype)
        if not torch.is_grad_enabled():  # jumprelu, batchtopk: one pass, no extra [.., d_sae] buffers
            return pre.masked_fill_((pre <= threshold) | (pre <= 0), 0.0).to(self.dtype)
        return (torch.relu(pre) * (pre > threshold).to(pre.dtype)).to(self.dtype)

    def encode_with_state(self, x: Tensor) -> tuple[Tensor, TransformState]:
        """``[..., d_in] -> ([..., d_sae], state)``; ``state`` lets ``decode`` undo the input transform."""
        x, state = self._prepare(x)
        return self._activate(x), state

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations of raw activations: ``[..., d_in] -> [..., d_sae]``."""
        return self.encode_with_state(x)[0]

    def encode_sparse(self, x: Tensor) -> SparseCode:
        """TopK only: ``[..., d_in] -> SparseCode(values [..., k], indices [..., k], state)``."""
        if self.cfg.architecture != "topk":
            raise ConfigError(f"encode_sparse needs a topk SAE, this one is {self.cfg.architecture}")
        x, state = self._prepare(x)
        if self._half:  # select on float32 pre-activations (see _activate)
            values, indices = kernels.topk_relu(kernels.linear_fp32(x, self.W_enc, self.b_enc), self.cfg.k)
            return SparseCode(values.to(self.dtype), indices, state)
        return SparseCode(*kernels.topk_relu(kernels.linear(x, self.W_enc, self.b_enc), self.cfg.k), state)

    def _finish(self, x_hat: Tensor, state: TransformState | None) -> Tensor:
        if self.cfg.is_transcoder:  # output space: no input transform to undo (transcoders take 'none')
            return x_hat
        if state is not None and self._half:  # a float32 state (see _prepare): keep the output in the SAE dtype
            state = transforms.to_device(state, x_hat)
        if state is None:
            state = transforms.fixed_state(self.cfg.input_transform, self.cfg.input_scale)
            if state is None:
                raise ConfigError(
                    f"decode(f) without a state cannot undo this SAE's input transform {self.cfg.input_transform!r} "
                    f"(it depends on the input): use sae(x), or f, state = sae.encode_with_state(x); "
                    f"sae.decode(f, state)")
        x_hat = transforms.invert(x_hat, state)
        if state is not None and state.shape is not None:
            x_hat = x_hat.unflatten(-1, state.shape)
        return x_hat

    def decode(self, f: Tensor, state: TransformState | None = None) -> Tensor:
        """``[..., d_sae] -> [..., d_in]`` (``[..., d_out]`` for a transcoder) in raw activation space.
        ``state`` (from ``encode_with_state``) undoes the input transform; without it only the input-independent
        transforms (``none``, ``scale``) can be undone, and the others (center, layer_norm,
        constant_norm_rescale) raise ConfigError rather than return the SAE's normalised space."""
        return self._finish(kernels.decode(f.to(self.dtype), self.W_dec, self.b_dec), state)

    def decode_sparse(self, code: SparseCode) -> Tensor:
        """``SparseCode -> [..., d_in]`` with an ``embedding_bag`` over the k active rows of ``W_dec``."""
        return self._finish(kernels.sparse_decode(code.values, code.indices, self.W_dec, self.b_dec), code.state)

    def skip_term(self, x: Tensor) -> Tensor | None:
        """A skip transcoder's linear path ``x @ W_skip.T``: ``[..., d_in] -> [..., d_out]``; None without one."""
        if not self.cfg.skip:
            return None
        x, _ = self._prepare(x)
        return kernels.linear(x.to(self.dtype), self.W_skip.T, None)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(x), state of x)`` (+ the skip path of a skip transcoder):
        ``[..., d_in] -> [..., d_out]`` (``d_out == d_in`` for an SAE)."""
        if self.cfg.architecture == "topk":
            out = self.decode_sparse(self.encode_sparse(x))
        else:
            f, state = self.encode_with_state(x)
            out = self.decode(f, state)
        skip = self.skip_term(x)
        return out if skip is None else out + skip

    def error(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """The error term ``target - forward(x)``: ``[..., d_in] -> [..., d_out]``. For an SAE the target is ``x``;
        a transcoder needs the activation it predicts (``metadata.hook_name_out``)."""
        if target is None:
            if self.cfg.is_transcoder:
                raise ConfigError("error(): a transcoder needs the target activation (its output hook "
                                  f"{self.cfg.metadata.hook_name_out}); call error(x, target)")
            target = x
        return target.to(self.dtype) - self.forward(x)

    def feature_directions(self, idx=None) -> Tensor:
        """Decoder rows in raw activation space (the fixed ``scale`` undone): ``[n, d_in]``
        (all features, or those in ``idx``: an int, a list or a LongTensor)."""
        W = self.W_dec if idx is None else self.W_dec[torch.as_tensor(idx, device=self.device).reshape(-1)]
        if self.cfg.input_transform == "scale":
            W = W / self.cfg.input_scale
        return W

    # ---- folding ----------------------------------------------------------------------------------
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Give every decoder row unit norm, scaling the encoder so that ``forward`` is unchanged and each
        feature activation is multiplied by its decoder norm. Refused for topk unless the norms are already 1
        (rescaling would change which k latents win)."""
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        if self.cfg.architecture == "topk":
            if torch.allclose(norms, torch.ones_like(norms), atol=1e-5):
                return
            raise ConfigError("fold_W_dec_norm: not exact for a topk SAE whose decoder rows are not unit norm")
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms[None, :])
        for name in ("b_enc", "threshold", "b_gate", "b_mag"):
            if hasattr(self, name):
                getattr(self, name).mul_(norms)

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Fold the ``scale`` transform ``x * s`` into the weights (W_enc * s; W_dec, b_dec / s), leaving
        transform ``none`` with identical features and reconstructions."""
        if self.cfg.input_transform != "scale":
            return
        s = float(self.cfg.input_scale)
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)
        self.cfg = self.cfg.replace(input_transform="none", input_scale=1.0)

    @torch.no_grad()
    def fold_input_shift(self, shift: Tensor) -> None:
        """Make an SAE trained on ``x - shift`` take ``x`` (exact): ``shift [d_in]`` (or ``[n_heads, d_head]``).
        E.g. TransformerLens's processed ``hook_z`` is the raw z minus ``b_V + ln_1.b @ W_V`` per head.
        With ``apply_b_dec_to_input``: ``b_dec += shift``; otherwise the encoder biases absorb ``-shift @ W_enc``
        and ``b_dec += shift``. A transcoder's output does not move with its input: only the encoder biases (and,
        with a skip path, ``b_dec -= shift @ W_skip.T``) change. Only for transform ``none``."""
        if self.cfg.input_transform != "none":
            raise ConfigError(f"fold_input_shift needs input transform none, this SAE has {self.cfg.input_transform}")
        shift = shift.reshape(-1).to(self.W_enc)
        if shift.shape != (self.d_in,):
            raise InputError(f"fold_input_shift: shift has {shift.numel()} values, the SAE has d_in={self.d_in}")
        if not self.cfg.apply_b_dec_to_input:
            proj = shift @ self.W_enc
            if self.cfg.architecture == "gated":
                self.b_gate.sub_(proj)
                self.b_mag.sub_(proj * self.r_mag.exp())
            else:
                self.b_enc.sub_(proj)
        if self.cfg.is_transcoder:
            if self.cfg.skip:
                self.b_dec.sub_(shift @ self.W_skip.T)
            return
        self.b_dec.add_(shift)

    # ---- files ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path, device=None, dtype=None, format: str | None = None, architecture: str | None = None) -> "SAE":
        """Load any supported format (auto-detected, or ``format=``; see docs/formats.md). Weights are read one
        tensor at a time into their final dtype (``dtype=torch.bfloat16`` never holds a float32 copy of the SAE).
        ``architecture`` supplies what a checkpoint cannot say itself (e.g. a dictionary_learning ``ae.pt``
        without its ``config.json``); a file that states an architecture must agree with it."""
        from .formats import load_sae

        return load_sae(path, device=device, dtype=dtype, fmt=format, architecture=architecture)

    def save(self, path, format: str = "saelens") -> None:
        """Write directory ``path``, file by file atomically: ``"saelens"`` (native, SAELens v6 layout) or
        ``"sparsify"`` (EleutherAI sparsify layout; TopK SAEs and transcoders only)."""
        if format == "saelens":
            from .formats.saelens import save_native

            save_native(self, path)
        elif format == "sparsify":
            from .formats.sparsify import save_sparsify

            save_sparsify(self, path)
        else:
            raise ConfigError(f"SAE.save: unknown format {format!r} (expected saelens or sparsify)")

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str, device=None) -> "SAE":
        """A registered release (``saescope list``), through the huggingface_hub cache."""
        from .registry import load_pretrained

        return load_pretrained(release, sae_id, device=device)

    @classmethod
    def from_spec(cls, spec: str, device=None, architecture: str | None = None) -> "SAE":
        """A local path, or ``RELEASE:SAE_ID`` (``tiny:<id>`` = the bundled SAEs). ``architecture``: see ``load``
        (local paths only: a registered release states its own)."""
        from .registry import load_spec

        if architecture is not None:
            if not isinstance(spec, str) or not Path(spec).expanduser().exists():
                raise InputError(f"architecture={architecture!r} applies to a local checkpoint path; {spec!r} is not one "
                                 f"(a registered release states its own architecture)")
            return cls.load(Path(spec).expanduser(), device=device, architecture=architecture)
        return load_spec(spec, device=device)

    @classmethod
    def from_state_dict(cls, cfg: SAEConfig, state: dict, device=None, dtype=None,
                        source: str = "state dict") -> "SAE":
        """Build an SAE from tensors with SAELens names (plain tensors or the ``LazyTensor``s of a reader):
        checks names, shapes and dtypes first, then reads/converts one tensor at a time, checking finiteness."""
        from .formats.common import assemble

        return assemble(cls, cfg, state, device=device, dtype=dtype, source=source)
