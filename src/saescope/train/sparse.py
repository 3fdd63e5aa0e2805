"""Sparse TopK fast path: decoder forward/backward and encoder weight gradients over the active latents only.

The active latents of a batch form a sparse matrix ``A`` of shape ``[B, d_sae]`` with ``nnz`` entries, held in
CSR order (rows ascending, columns ascending within a row). With ``g = dL/dx_hat [B, d_in]``:

    x_hat      = A @ W_dec                        embedding_bag(cols, W_dec, offsets, per_sample_weights=vals)
    dL/dvals   = (g @ W_dec^T) sampled at A       torch.sparse.sampled_addmm  (never forms the dense [B, d_sae])
    dL/dW_dec  = A^T @ g                          CSR [d_sae, B] @ [B, d_in]
    dL/dW_enc^T= G^T @ x_in                       CSR [d_sae, B] @ [B, d_in], G = dL/dpre at A's entries
    dL/db_enc  = column sums of G                 bincount
    dL/dx_in   = G @ W_enc^T                      embedding_bag again

The dense encoder matmul ``pre = x_in @ W_enc + b_enc`` stays (it is needed to choose the active latents).
Internally the encoder is stored transposed, ``W_enc_T [d_sae, d_in]``, so that both weight gradients are
row-gathers of the same shape. Everything here is pure PyTorch and runs on CPU and GPU.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .triton_topk import dispatch as _kernels   # Triton kernels on CUDA when available (PyTorch otherwise)

warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled.*")


@dataclass
class ActivePattern:
    """Positions of the active latents of a batch, in CSR order.

    crow [B + 1], cols [nnz], rows [nnz] (rows ascending, cols ascending within a row); the transpose
    (CSR of ``[d_sae, B]``) is described by ``t_crow [d_sae + 1]``, ``t_cols [nnz]`` and ``t_perm [nnz]``
    (entry ``t_perm[j]`` of the CSR order is the j-th entry of the transposed order).
    """

    crow: torch.Tensor
    cols: torch.Tensor
    rows: torch.Tensor
    n_rows: int
    n_cols: int
    t_crow: torch.Tensor
    t_cols: torch.Tensor
    t_perm: torch.Tensor

    @property
    def nnz(self) -> int:
        return int(self.cols.numel())

    @classmethod
    def from_rows_cols(cls, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int,
                       crow: torch.Tensor | None = None) -> "ActivePattern":
        """rows, cols [nnz] already in CSR order (``crow`` if already known)."""
        if crow is None:
            counts = torch.bincount(rows, minlength=n_rows)
            crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
            torch.cumsum(counts, 0, out=crow[1:])
        t_perm = torch.argsort(cols, stable=True)
        t_counts = torch.bincount(cols, minlength=n_cols)
        t_crow = torch.zeros(n_cols + 1, dtype=torch.long, device=rows.device)
        torch.cumsum(t_counts, 0, out=t_crow[1:])
        return cls(crow, cols, rows, n_rows, n_cols, t_crow, rows[t_perm], t_perm)

    @classmethod
    def from_topk(cls, idx: torch.Tensor, n_cols: int) -> tuple["ActivePattern", torch.Tensor]:
        """idx [B, k] (any order within a row) -> (pattern, order [B, k]) where ``idx.gather(1, order)`` is sorted."""
        sorted_idx, order = idx.sort(dim=1)
        n_rows, k = idx.shape
        rows = torch.arange(n_rows, device=idx.device).repeat_interleave(k)
        crow = torch.arange(0, n_rows * k + 1, k, device=idx.device)
        return cls.from_rows_cols(rows, sorted_idx.reshape(-1), n_rows, n_cols, crow), order

    @classmethod
    def from_flat(cls, flat_idx: torch.Tensor, n_rows: int, n_cols: int) -> tuple["ActivePattern", torch.Tensor]:
        """flat indices into a row-major ``[B, d_sae]`` -> (pattern, order) where ``flat_idx[order]`` is CSR order."""
        sorted_flat, order = flat_idx.sort()
        return cls.from_rows_cols(sorted_flat // n_cols, sorted_flat % n_cols, n_rows, n_cols), order

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """The ``[B, d_sae]`` CSR tensor with these values (CSR order)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.cols, values, (self.n_rows, self.n_cols),
                                           check_invariants=False)

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        """The transposed ``[d_sae, B]`` CSR tensor of values given in CSR order."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.t_crow, self.t_cols, values[self.t_perm], (self.n_cols, self.n_rows),
                                           check_invariants=False)

    def bag(self, weight: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Row sums ``A @ weight``: values [nnz], weight [d_sae, d] -> [B, d]."""
        return F.embedding_bag(self.cols, weight, self.crow, mode="sum", per_sample_weights=values,
                               include_last_offset=True)

    def sampled(self, g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``(g @ weight^T)`` at the pattern's entries: g [B, d], weight [d_sae, d] -> [nnz] (CSR order)."""
        if self.nnz == 0:
            return g.new_zeros(0)
        if (k := _kernels(g)) is not None:
            return k.sampled(self, g, weight)
        zero = self.csr(torch.zeros(self.nnz, dtype=g.dtype, device=g.device))
        return torch.sparse.sampled_addmm(zero, g, weight.t(), beta=0.0).values()

    def t_matmul(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``A^T @ dense``: values [nnz], dense [B, d] -> [d_sae, d]."""
        if self.nnz == 0:
            return dense.new_zeros(self.n_cols, dense.shape[1])
        if (k := _kernels(dense)) is not None:
            return k.t_matmul(self, values, dense)
        return torch.sparse.mm(self.csr_t(values), dense)


class _EncodeAt(torch.autograd.Function):
    """Pre-activations at the pattern: ``(x_in @ W_enc_T^T + b_enc)[pattern]``, values precomputed by the caller."""

    @staticmethod
    def forward(ctx, x_in, W_enc_T, b_enc, pre_values, pattern):
        ctx.save_for_backward(x_in, W_enc_T)
        ctx.pattern = pattern
        return pre_values.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        x_in, W_enc_T = ctx.saved_tensors
        p: ActivePattern = ctx.pattern
        grad = grad.contiguous()
        g_x = g_w = g_b = None
        if ctx.needs_input_grad[0]:
            g_x = p.bag(W_enc_T, grad)
        if ctx.needs_input_grad[1]:
            g_w = p.t_matmul(grad, x_in)
        if ctx.needs_input_grad[2]:
            g_b = torch.bincount(p.cols, weights=grad, minlength=p.n_cols).to(grad.dtype)
        return g_x, g_w, g_b, None, None


class _DecodeSparse(torch.autograd.Function):
    """``A @ W_dec`` for the sparse activations A (values [nnz] at the pattern) -> [B, d_in]."""

    @staticmethod
    def forward(ctx, values, W_dec, pattern):
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern
        return pattern.bag(W_dec, values)

    @staticmethod
    def backward(ctx, g):
        values, W_dec = ctx.saved_tensors
        p: ActivePattern = ctx.pattern
        g = g.contiguous()
        g_v = g_w = None
        if ctx.needs_input_grad[0]:
            g_v = p.sampled(g, W_dec)
        if ctx.needs_input_grad[1]:
            g_w = p.t_matmul(values, g)
        return g_v, g_w, None


def encode_at(x_in: torch.Tensor, W_enc_T: torch.Tensor, b_enc: torch.Tensor, pre_values: torch.Tensor,
              pattern: ActivePattern) -> torch.Tensor:
    """Differentiable pre-activations at the pattern's entries: [B, d_in] -> [nnz] (CSR order).

    ``pre_values`` are the already computed values (taken from the dense pre-activations); the backward pass
    touches only the nnz active rows of ``W_enc_T`` and ``b_enc``.
    """
    return _EncodeAt.apply(x_in, W_enc_T, b_enc, pre_values, pattern)


def decode_sparse(values: torch.Tensor, W_dec: torch.Tensor, pattern: ActivePattern) -> torch.Tensor:
    """Differentiable sparse decode: values [nnz], W_dec [d_sae, d_in] -> [B, d_in] (no bias)."""
    return _DecodeSparse.apply(values, W_dec, pattern)


def topk_pattern(pre: torch.Tensor, k: int) -> tuple[ActivePattern, torch.Tensor]:
    """Per-row TopK of pre-activations: pre [B, d_sae] -> (pattern, pre values [B*k] in CSR order)."""
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    pattern, order = ActivePattern.from_topk(idx, pre.shape[1])
    return pattern, vals.gather(1, order).reshape(-1)


def batch_topk_pattern(acts: torch.Tensor, k_total: int) -> tuple[ActivePattern, torch.Tensor]:
    """BatchTopK: the k_total largest entries of the whole batch: acts [B, d_sae] -> (pattern, values [nnz])."""
    flat = acts.reshape(-1)
    vals, idx = flat.topk(min(k_total, flat.numel()), sorted=False)
    pattern, order = ActivePattern.from_flat(idx, acts.shape[0], acts.shape[1])
    return pattern, vals[order]


def select_active(x_in: torch.Tensor, W_enc_T: torch.Tensor, b_enc: torch.Tensor, k: int, per_row: bool):
    """The TopK (``per_row``) or BatchTopK selection of a batch and its differentiable values:
    x_in [B, d_in] -> (pre-activations [B, d_sae] without grad, pattern, values [nnz] = relu(pre) at the pattern)."""
    with torch.no_grad():
        pre = torch.addmm(b_enc, x_in, W_enc_T.t())
    if per_row:
        pattern, pre_vals = topk_pattern(pre, min(k, pre.shape[1]))
    else:
        pattern, pre_vals = batch_topk_pattern(pre, k * x_in.shape[0])
    return pre, pattern, torch.relu(encode_at(x_in, W_enc_T, b_enc, pre_vals, pattern))
