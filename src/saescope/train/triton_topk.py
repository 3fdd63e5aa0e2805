"""Triton kernels for the two sparse products of the TopK training step (``train/sparse.py``), on CUDA.

    sampled(pattern, g, W)        (g @ W^T) at the pattern's nnz entries -> [nnz]      (dL/dvals of the decoder)
    t_matmul(pattern, vals, X)    A^T @ X, A = [B, d_sae] sparse with vals -> [d_sae, d] (dL/dW_dec, dL/dW_enc^T)

PyTorch computes these with ``torch.sparse.sampled_addmm`` and a CSR ``torch.sparse.mm`` (cuSPARSE on CUDA);
the kernels read the index arrays ``ActivePattern`` already holds, gather rows directly, accumulate in float32
and write the dense result in one pass. ``sparse.py`` calls them through ``dispatch(tensor)``, with PyTorch as
the fallback whenever Triton, CUDA or the switch is missing:

    SAESCOPE_TRITON=0          never use the kernels
    SAESCOPE_TRITON=1 / unset  use them for CUDA tensors when Triton imports
    SAESCOPE_TRITON=interpret  also for CPU tensors, under Triton's interpreter (set TRITON_INTERPRET=1 before
                               Triton is imported): for tests on machines without a GPU

``benchmarks/gpu_bench.py`` times both paths side by side on the GPU and checks they agree.
"""
from __future__ import annotations

import functools
import os

import torch

try:   # optional: the PyTorch path is complete without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None


def _mode() -> str:
    return os.environ.get("SAESCOPE_TRITON", "1").strip().lower()


def available() -> bool:
    """Triton imported and not switched off."""
    return triton is not None and _mode() not in ("0", "off", "false", "no")


def dispatch(t: torch.Tensor):
    """This module when its kernels should handle tensors like ``t``, else None (use PyTorch)."""
    if not available():
        return None
    if t.is_cuda or (_mode() == "interpret" and os.environ.get("TRITON_INTERPRET") == "1"):
        import sys

        return sys.modules[__name__]
    return None


if triton is not None:

    @triton.jit
    def _sampled_kernel(rows_ptr, cols_ptr, g_ptr, w_ptr, out_ptr, nnz, d, stride_g, stride_w,
                        BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
        """out[e] = sum_i g[rows[e], i] * w[cols[e], i] for a block of BLOCK_E entries."""
        e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        em = e < nnz
        r = tl.load(rows_ptr + e, mask=em, other=0).to(tl.int64)
        c = tl.load(cols_ptr + e, mask=em, other=0).to(tl.int64)
        acc = tl.zeros([BLOCK_E], dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            i = d0 + tl.arange(0, BLOCK_D)
            m = em[:, None] & (i < d)[None, :]
            gv = tl.load(g_ptr + r[:, None] * stride_g + i[None, :], mask=m, other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + c[:, None] * stride_w + i[None, :], mask=m, other=0.0).to(tl.float32)
            acc += tl.sum(gv * wv, axis=1)
        tl.store(out_ptr + e, acc.to(out_ptr.dtype.element_ty), mask=em)

    @triton.jit
    def _t_matmul_kernel(t_crow_ptr, t_rows_ptr, vals_ptr, x_ptr, out_ptr, d, stride_x, stride_out,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """out[j, i] = sum over latent j's entries e of vals[e] * x[t_rows[e], i] (one latent, BLOCK_D columns)."""
        j = tl.program_id(0).to(tl.int64)
        i = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        im = i < d
        start = tl.load(t_crow_ptr + j)
        end = tl.load(t_crow_ptr + j + 1)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for e0 in range(start, end, BLOCK_N):
            e = e0 + tl.arange(0, BLOCK_N)
            em = e < end
            r = tl.load(t_rows_ptr + e, mask=em, other=0).to(tl.int64)
            v = tl.load(vals_ptr + e, mask=em, other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + r[:, None] * stride_x + i[None, :], mask=em[:, None] & im[None, :], other=0.0)
            acc += tl.sum(v[:, None] * xv.to(tl.float32), axis=0)
        tl.store(out_ptr + j * stride_out + i, acc.to(out_ptr.dtype.element_ty), mask=im)


@functools.lru_cache(maxsize=None)
def _block_d(d: int) -> int:
    return min(256, triton.next_power_of_2(d))


def sampled(pattern, g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(g @ weight^T)`` at the pattern's entries: g [B, d], weight [d_sae, d] -> [nnz] (CSR order)."""
    g, weight = g.contiguous(), weight.contiguous()
    out = torch.empty(pattern.nnz, dtype=g.dtype, device=g.device)
    if pattern.nnz == 0:
        return out
    d, block_e = g.shape[1], 32
    grid = (triton.cdiv(pattern.nnz, block_e),)
    _sampled_kernel[grid](pattern.rows, pattern.cols, g, weight, out, pattern.nnz, d, g.stride(0), weight.stride(0),
                          BLOCK_E=block_e, BLOCK_D=min(128, _block_d(d)))
    return out


def t_matmul(pattern, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``A^T @ dense``: values [nnz] (CSR order), dense [B, d] -> [d_sae, d] (zero rows for inactive latents)."""
    dense = dense.contiguous()
    d = dense.shape[1]
    out = torch.empty(pattern.n_cols, d, dtype=dense.dtype, device=dense.device)
    vals_t = values[pattern.t_perm].contiguous()
    grid = (pattern.n_cols, triton.cdiv(d, _block_d(d)))
    _t_matmul_kernel[grid](pattern.t_crow, pattern.t_cols, vals_t, dense, out, d, dense.stride(0), out.stride(0),
                           BLOCK_N=16, BLOCK_D=_block_d(d))
    return out
