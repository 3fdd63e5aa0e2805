"""Sparse TopK paths in pure PyTorch: encode to (values, indices), decode with ``embedding_bag``.

A dense decode of a TopK code costs ``2 * d_sae * d_in`` FLOPs per token; the sparse one costs
``2 * k * d_in``. All functions take any leading batch dimensions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """``x @ W + b`` as one fused ``addmm``: ``[..., n] -> [..., m]`` with ``W [n, m]``, ``b [m]``."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.addmm(b, x2, W) if b is not None else x2 @ W
    return out.reshape(*lead, W.shape[-1])


_HALF = (torch.float16, torch.bfloat16)
_CUDA_OUT_DTYPE = [True]  # torch.mm(..., out_dtype=float32) on CUDA; switched off if this torch lacks it


def linear_fp32(x: Tensor, W: Tensor, b: Tensor | None, block_bytes: int = 64 * 2**20) -> Tensor:
    """``x @ W + b`` accumulated *and returned* in float32 for half-precision ``x``/``W``:
    ``[..., n] -> [..., m]`` (float32). On CUDA: one fp16/bf16 GEMM with a float32 output; elsewhere ``W`` is
    upcast a block of columns at a time (at most ``block_bytes`` extra memory, never a float32 copy of W)."""
    if W.dtype not in _HALF:
        return linear(x.to(W.dtype), W, b).float()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    b32 = b.float() if b is not None else None
    if x2.is_cuda and _CUDA_OUT_DTYPE[0]:
        try:
            out = torch.mm(x2.to(W.dtype), W, out_dtype=torch.float32)
            return (out + b32 if b32 is not None else out).reshape(*lead, W.shape[-1])
        except (RuntimeError, NotImplementedError, TypeError):
            _CUDA_OUT_DTYPE[0] = False
    x32 = x2.float()
    out = torch.empty(x2.shape[0], W.shape[-1], dtype=torch.float32, device=x.device)
    step = max(1, block_bytes // (4 * max(1, W.shape[0])))
    for j in range(0, W.shape[-1], step):
        block = W[:, j:j + step].float()
        out[:, j:j + step] = torch.addmm(b32[j:j + step], x32, block) if b32 is not None else x32 @ block
    return out.reshape(*lead, W.shape[-1])


def topk_relu(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest pre-activations, ReLU'd: ``[..., d_sae] -> (values [..., k], indices [..., k])``."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices


def scatter_dense(values: Tensor, indices: Tensor, d_sae: int) -> Tensor:
    """Sparse code to dense: ``([..., k], [..., k]) -> [..., d_sae]`` (zeros elsewhere)."""
    out = values.new_zeros(*values.shape[:-1], d_sae)
    return out.scatter_(-1, indices, values)


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """``sum_j values[j] * W_dec[indices[j]] (+ b_dec)``: ``([..., k], [..., k]) -> [..., d_in]``."""
    lead = values.shape[:-1]
    k = values.shape[-1]
    out = F.embedding_bag(indices.reshape(-1, k), W_dec, per_sample_weights=values.reshape(-1, k).to(W_dec.dtype),
                          mode="sum")
    out = out.reshape(*lead, W_dec.shape[-1])
    return out + b_dec if b_dec is not None else out


SPARSE_DECODE_MAX_DENSITY = 0.05


def decode(f: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """``f @ W_dec + b_dec``: ``[..., d_sae] -> [..., d_in]``. Without autograd, when under 5% of ``f`` is
    non-zero (typical of trained SAEs; estimated on the first 256 rows), only the non-zeros are gathered
    (``nonzero`` + ``embedding_bag``): about 6x faster than the dense product at L0 150 of 24,576."""
    if not torch.is_grad_enabled() and f.numel() >= 2**20 and f.layout == torch.strided:
        f2 = f.reshape(-1, f.shape[-1])
        head = f2[:256]
        if int(torch.count_nonzero(head)) <= SPARSE_DECODE_MAX_DENSITY * head.numel():
            rows, cols = f2.nonzero(as_tuple=True)  # row-major order: rows ascending
            counts = torch.bincount(rows, minlength=f2.shape[0])
            offsets = torch.cumsum(counts, 0) - counts
            out = F.embedding_bag(cols, W_dec, offsets, per_sample_weights=f2[rows, cols], mode="sum")
            return (out + b_dec).reshape(*f.shape[:-1], W_dec.shape[-1])
    return linear(f, W_dec, b_dec)
