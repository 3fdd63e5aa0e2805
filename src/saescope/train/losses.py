"""Trainable SAE parameters and the training loss of each architecture.

All inputs here are *normalised* activations ``x [B, d_in]`` (the trainer scales raw activations so that
E||x|| = sqrt(d_in)); the scale is folded back into the exported SAE. The encoder is stored transposed,
``W_enc_T [d_sae, d_in]`` (SAELens's ``W_enc`` is its transpose). With ``x_in = x - b_dec`` (if
``apply_b_dec_to_input``) and ``pre = x_in @ W_enc + b_enc [B, d_sae]``:

    relu       f = relu(pre);                     L = ||x - x_hat||^2 + l1(t) * sum_i f_i ||W_dec_i||
    topk       f = relu(TopK_k(pre));             L = ||x - x_hat||^2 + aux * AuxK   (sparse fast path)
    batchtopk  f = relu(TopK_{k*B}(pre over the batch)); same loss; threshold = EMA of the smallest kept value
               (restarted where the LR decay begins, so it reflects the final weights)
    jumprelu   f = pre * H(pre - theta);          L = ||x - x_hat||^2 + l0 * sum_i H(pre_i - theta_i)
               (straight-through rectangle-kernel gradients for theta, Rajamanoharan et al. 2024; theta is a
               parameter kept >= 0 after each step, not exp(log theta): Adam moves a parameter by ~lr per step,
               so a log parameter barely moves a threshold in a short run; its lr is jumprelu_threshold_lr_scale
               times lr, since thresholds start near 2 in normalised units); with jumprelu_sparsity_loss="tanh"
               the penalty is sum_i tanh(c f_i ||W_dec_i||) instead (Anthropic, 2025); with
               jumprelu_ste_to_input the pseudo-derivatives reach the encoder too (Anthropic), which a short
               run needs: otherwise only theta, moving ~lr per step, opposes an encoder that grows faster)
    gated      pi = x_in W_enc + b_gate, mag = x_in (W_enc * exp(r_mag)) + b_mag, f = 1[pi > 0] relu(mag)
               L = ||x - x_hat||^2 + l1 * sum_i relu(pi_i) ||W_dec_i|| + ||x - (relu(pi) W_dec' + b_dec')||^2 (' = detached)

The penalties are multiplied by ``coef_scale`` (warm-up, or the target-L0 controller of ``sparsity.py``).
with ``x_hat = f @ W_dec + b_dec``; squared errors are summed over d_in and averaged over the batch.
AuxK (Gao et al. 2024): the top ``aux_k`` pre-activations among dead latents reconstruct the residual
``x - x_hat`` (detached), scaled by min(n_dead / aux_k, 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .config import TrainConfig
from .sparse import ActivePattern, decode_sparse, encode_at, select_active, topk_pattern


@dataclass
class StepOutput:
    """What one forward pass of the training loss returns."""

    loss: torch.Tensor              # scalar, differentiable
    parts: dict                     # name -> float (mse, aux, l1, l0_penalty ...)
    x_hat: torch.Tensor             # [B, d_in], detached
    fire_counts: torch.Tensor       # [d_sae] float: tokens of the batch on which each latent fired
    l0: float                       # mean number of active latents per token
    extra: dict = field(default_factory=dict)


def _rect(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


class _JumpReLU(torch.autograd.Function):
    """f = pre * H(pre - theta): gradient pre -> H, theta -> -(theta/eps) K((pre - theta)/eps) (pseudo-derivative);
    with ``to_input`` the pseudo-derivative also reaches pre (with the opposite sign), and so the encoder."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth, to_input=False):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth, ctx.to_input = bandwidth, to_input
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        ste = g * ((theta / eps) * _rect((pre - theta) / eps))
        g_pre = g * (pre > theta).to(g.dtype)
        if ctx.to_input:
            g_pre = g_pre + ste
        return g_pre, -ste.sum(0), None, None


class _Step(torch.autograd.Function):
    """H(pre - theta): theta -> -(1/eps) K((pre - theta)/eps); pre -> the opposite with ``to_input``, else none."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth, to_input=False):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth, ctx.to_input = bandwidth, to_input
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        ste = g * ((1.0 / eps) * _rect((pre - theta) / eps))
        return (ste if ctx.to_input else None), -ste.sum(0), None, None


class TrainableSAE(nn.Module):
    """Parameters in normalised activation space. ``d_in -> d_sae``; see the module docstring for the losses."""

    def __init__(self, cfg: TrainConfig, d_in: int, generator: torch.Generator, device=None, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        self.d_in = d_in
        self.d_sae = d_sae = cfg.resolved_d_sae(d_in)
        self.arch = cfg.architecture
        W_dec = torch.randn(d_sae, d_in, generator=generator, dtype=dtype)
        W_dec *= cfg.resolved_decoder_init_norm / W_dec.norm(dim=1, keepdim=True)
        W_dec = W_dec.to(device)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc_T = nn.Parameter(W_dec.clone())          # W_enc = W_dec^T at init
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype, device=device))
        if self.arch == "jumprelu":
            self.threshold = nn.Parameter(
                torch.full((d_sae,), float(cfg.jumprelu_init_threshold), dtype=dtype, device=device))
        if self.arch == "gated":
            self.r_mag = nn.Parameter(torch.zeros(d_sae, dtype=dtype, device=device))
            self.b_mag = nn.Parameter(torch.zeros(d_sae, dtype=dtype, device=device))
        # BatchTopK inference threshold (EMA of the smallest kept activation); -1 = not yet estimated
        self.register_buffer("batch_threshold", torch.tensor(-1.0, dtype=torch.float64, device=device))

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups; ``lr_scale`` multiplies the scheduled lr (JumpReLU thresholds)."""
        if self.arch != "jumprelu":
            return [{"params": list(self.parameters())}]
        rest = [p for name, p in self.named_parameters() if name != "threshold"]
        return [{"params": rest}, {"params": [self.threshold], "lr_scale": float(self.cfg.jumprelu_threshold_lr_scale)}]

    # -------------------------------------------------------------------------------------------------
    def x_in(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def pre_acts(self, x_in: torch.Tensor) -> torch.Tensor:
        """[B, d_in] -> [B, d_sae] (differentiable, dense)."""
        return torch.addmm(self.b_enc, x_in, self.W_enc_T.t())

    def loss(self, x: torch.Tensor, dead: torch.Tensor | None, l1_scale: float = 1.0) -> StepOutput:
        """x [B, d_in] (normalised); dead [d_sae] bool or None; l1_scale multiplies the configured sparsity
        coefficient (warm-up, or the target-L0 controller)."""
        if self.arch in ("topk", "batchtopk"):
            return self._loss_sparse(x, dead)
        return self._loss_dense(x, l1_scale)

    def _loss_sparse(self, x, dead) -> StepOutput:
        return sparse_step(self, self.x_in(x), x, dead, self.b_dec, None)

    SPARSE_RELU_DENSITY = 0.015  # below this fraction of active latents, ReLU uses the sparse path

    def _loss_relu_sparse(self, x, l1_scale) -> StepOutput | None:
        """ReLU+L1 over the active latents only (exact: ReLU's gradient is zero elsewhere). None if too dense."""
        cfg = self.cfg
        x_in = self.x_in(x)
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x_in, self.W_enc_T.t())
            active = pre > 0
            nnz = int(torch.count_nonzero(active))
            self._density = nnz / active.numel()
            if self._density >= self.SPARSE_RELU_DENSITY:
                return None
            rows, cols = active.nonzero(as_tuple=True)       # row-major: CSR order
            pattern = ActivePattern.from_rows_cols(rows, cols, x.shape[0], self.d_sae)
            pre_vals = pre[rows, cols]
        del pre, active
        vals = torch.relu(encode_at(x_in, self.W_enc_T, self.b_enc, pre_vals, pattern))
        x_hat = decode_sparse(vals, self.W_dec, pattern) + self.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        l1 = (vals * self.W_dec.norm(dim=1)[cols]).sum() / x.shape[0]
        loss = mse + cfg.l1_coefficient * l1_scale * l1
        with torch.no_grad():
            fire_counts = torch.bincount(cols, minlength=self.d_sae).to(x.dtype)
        return StepOutput(loss, {"l1": float(l1.detach()), "mse": float(mse.detach())}, x_hat.detach(),
                          fire_counts, nnz / x.shape[0])

    def _loss_dense(self, x, l1_scale) -> StepOutput:
        cfg = self.cfg
        if self.arch == "relu" and getattr(self, "_density", 1.0) < self.SPARSE_RELU_DENSITY:
            out = self._loss_relu_sparse(x, l1_scale)
            if out is not None:
                return out
        x_in = self.x_in(x)
        pre = self.pre_acts(x_in)
        parts = {}
        dec_norms = self.W_dec.norm(dim=1)
        if self.arch == "relu":
            f = torch.relu(pre)
            x_hat = f @ self.W_dec + self.b_dec
            mse = (x_hat - x).pow(2).sum(-1).mean()
            l1 = f.sum(0) @ dec_norms / x.shape[0]
            loss = mse + cfg.l1_coefficient * l1_scale * l1
            parts["l1"] = float(l1.detach())
        elif self.arch == "jumprelu":
            theta = self.threshold
            f = _JumpReLU.apply(pre, theta, cfg.jumprelu_bandwidth, cfg.jumprelu_ste_to_input)
            x_hat = f @ self.W_dec + self.b_dec
            mse = (x_hat - x).pow(2).sum(-1).mean()
            if cfg.jumprelu_sparsity_loss == "tanh":
                l0_pen = torch.tanh(cfg.jumprelu_tanh_scale * f * dec_norms).sum(-1).mean()
            else:
                l0_pen = _Step.apply(pre, theta, cfg.jumprelu_bandwidth, cfg.jumprelu_ste_to_input).sum(-1).mean()
            loss = mse + cfg.l0_coefficient * l1_scale * l0_pen
            parts["l0_penalty"] = float(l0_pen.detach())
        elif self.arch == "gated":
            mag = torch.addmm(self.b_mag, x_in, (self.W_enc_T * self.r_mag.exp()[:, None]).t())
            f = (pre > 0).to(x.dtype) * torch.relu(mag)
            x_hat = f @ self.W_dec + self.b_dec
            mse = (x_hat - x).pow(2).sum(-1).mean()
            gate = torch.relu(pre)
            l1 = (gate * dec_norms).sum(-1).mean()
            x_aux = gate @ self.W_dec.detach() + self.b_dec.detach()
            aux = (x_aux - x).pow(2).sum(-1).mean()
            loss = mse + cfg.l1_coefficient * l1_scale * l1 + aux
            parts.update(l1=float(l1.detach()), aux=float(aux.detach()))
        else:  # pragma: no cover - validated by TrainConfig
            raise ValueError(self.arch)
        parts["mse"] = float(mse.detach())
        with torch.no_grad():
            fire_counts = torch.count_nonzero(f, dim=0).to(x.dtype)
            l0 = float(fire_counts.sum()) / x.shape[0]
            self._density = l0 / self.d_sae
        return StepOutput(loss, parts, x_hat.detach(), fire_counts, l0)

    # -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the component of W_dec's gradient along each (unit) decoder row."""
        g = self.W_dec.grad
        if g is None:
            return
        W = self.W_dec
        # g -= <g, w> w / |w|^2 per row, without materialising the normalised matrix
        coef = torch.bmm(g.unsqueeze(1), W.unsqueeze(2)).view(-1) / W.pow(2).sum(1).clamp_min(1e-24)
        g.sub_(W * coef.unsqueeze(1))

    @torch.no_grad()
    def resample(self, dead: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor, opt, generator: torch.Generator) -> int:
        """Re-initialise dead latents toward poorly reconstructed inputs (Anthropic 2023 style).

        dead [d_sae] bool; x, x_hat [B, d_in]. Inputs are drawn with probability proportional to their squared
        error; the new decoder row is the unit error direction (scaled to the mean alive decoder norm), the encoder
        row the same direction at 0.2x the mean alive encoder norm, b_enc 0; their Adam moments are zeroed.
        Returns the number of latents resampled.
        """
        idx = dead.nonzero().flatten()
        n = int(idx.numel())
        if n == 0:
            return 0
        err = (x - x_hat).pow(2).sum(1).double().cpu()
        if float(err.sum()) <= 0:
            return 0
        pick = torch.multinomial(err, n, replacement=n > err.numel(), generator=generator).to(x.device)
        direction = x[pick] - x_hat[pick]
        direction /= direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~dead
        dec_norm = self.W_dec[alive].norm(dim=1).mean() if bool(alive.any()) else torch.tensor(1.0)
        enc_norm = self.W_enc_T[alive].norm(dim=1).mean() if bool(alive.any()) else torch.tensor(1.0)
        self.W_dec[idx] = direction * dec_norm
        self.W_enc_T[idx] = direction * 0.2 * enc_norm
        self.b_enc[idx] = 0.0
        for p in (self.W_dec, self.W_enc_T, self.b_enc):
            for value in opt.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and value.shape[:1] == p.shape[:1] and value.dim() >= 1:
                    value[idx] = 0.0
        return n

    @torch.no_grad()
    def project(self) -> None:
        """After an optimiser step: keep JumpReLU thresholds >= 0 (projected, so no gradient is ever cut)."""
        if self.arch == "jumprelu":
            self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def renormalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def update_batch_threshold(self, batch_min: float | None, momentum: float) -> None:
        if batch_min is None:
            return
        if float(self.batch_threshold) < 0:
            self.batch_threshold.fill_(batch_min)
        else:
            self.batch_threshold.mul_(momentum).add_((1 - momentum) * batch_min)

    @torch.no_grad()
    def decoder_orthogonality(self, max_rows: int = 4096, seed: int = 0) -> float:
        """Mean |off-diagonal| of the Gram matrix of unit decoder rows (on at most max_rows sampled rows)."""
        W = self.W_dec
        if W.shape[0] > max_rows:
            g = torch.Generator().manual_seed(seed)
            W = W[torch.randperm(W.shape[0], generator=g)[:max_rows].to(W.device)]
        W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        n = W.shape[0]
        if n < 2:
            return 0.0
        total = 0.0
        for s in range(0, n, 1024):
            total += float((W[s:s + 1024] @ W.t()).abs().sum())
        return (total - n) / (n * (n - 1))

    @torch.no_grad()
    def export_tensors(self, scale: float) -> dict[str, torch.Tensor]:
        """SAELens-named tensors in *raw* activation space (inputs were multiplied by ``scale`` in training).

        pre = (s x - b_dec) W_enc + b_enc = (x - b_dec / s)(s W_enc) + b_enc and x_hat_raw = x_hat / s, so
        W_enc -> s W_enc, W_dec -> W_dec / s, b_dec -> b_dec / s; thresholds and other biases are unchanged.
        """
        t = {
            "W_enc": (self.W_enc_T.t() * scale).contiguous(),
            "W_dec": (self.W_dec / scale).contiguous(),
            "b_enc": self.b_enc.clone(),
            "b_dec": (self.b_dec / scale).clone(),
        }
        if self.arch == "jumprelu":
            t["threshold"] = self.threshold.clone()
        elif self.arch == "batchtopk":
            thr = max(float(self.batch_threshold), 0.0)
            t["threshold"] = torch.full_like(self.b_enc, thr)
        elif self.arch == "gated":
            t["b_gate"] = t.pop("b_enc")
            t["b_mag"] = self.b_mag.clone()
            t["r_mag"] = self.r_mag.clone()
        return {k: v.detach().float().cpu().contiguous() for k, v in t.items()}


def sparse_step(model, x_in: torch.Tensor, target: torch.Tensor, dead: torch.Tensor | None,
                base: torch.Tensor, widths: tuple[int, ...] | None) -> StepOutput:
    """TopK / BatchTopK loss on the sparse path.

    model: a TrainableSAE (``W_enc_T [d_sae, d_in]``, ``b_enc``, ``W_dec [d_sae, d_out]``); x_in [B, d_in] the
    encoder input; target [B, d_out]; base [B, d_out] or [d_out] the differentiable part of the prediction that
    does not go through the latents (``b_dec``, plus a skip term); widths: Matryoshka prefixes (None: one level).
    """
    cfg = model.cfg
    B = x_in.shape[0]
    pre, pattern, vals = select_active(x_in, model.W_enc_T, model.b_enc, cfg.k, per_row=cfg.architecture == "topk")
    parts = {}
    loss = 0.0
    levels = widths or (model.d_sae,)
    for w in levels:
        v = vals if w >= model.d_sae else vals * (pattern.cols < w).to(vals.dtype)
        y_hat = decode_sparse(v, model.W_dec, pattern) + base
        mse_w = (y_hat - target).pow(2).sum(-1).mean()
        loss = loss + mse_w
        if widths:
            parts[f"mse_{w}"] = float(mse_w.detach())
    parts["mse"] = float(mse_w.detach())
    with torch.no_grad():
        positive = vals > 0
        fire_counts = torch.bincount(pattern.cols[positive], minlength=model.d_sae).to(x_in.dtype)
        l0 = float(positive.sum()) / B
        extra = {}
        if cfg.batch_level_topk and bool(positive.any()):
            extra["batch_min"] = float(vals[positive].min())
    if dead is not None and cfg.aux_coefficient > 0:
        n_dead = int(dead.sum())
        if n_dead > 0:
            k_aux = min(cfg.aux_k or model.d_in // 2, n_dead)
            with torch.no_grad():
                aux_pattern, aux_pre = topk_pattern(pre.masked_fill(~dead, float("-inf")), k_aux)
            aux_vals = torch.relu(encode_at(x_in, model.W_enc_T, model.b_enc, aux_pre, aux_pattern))
            e_hat = decode_sparse(aux_vals, model.W_dec, aux_pattern)
            aux = (e_hat - (target - y_hat).detach()).pow(2).sum(-1).mean()
            loss = loss + cfg.aux_coefficient * min(n_dead / (cfg.aux_k or model.d_in // 2), 1.0) * aux
            parts["aux"] = float(aux.detach())
    del pre
    return StepOutput(loss, parts, y_hat.detach(), fire_counts, l0, extra)


def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: [N, d] -> [d], the point minimising the sum of Euclidean distances."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        d = (x - m).norm(dim=1).clamp_min(eps)
        w = 1.0 / d
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= eps * max(1.0, float(m.norm())):
            m = new
            break
        m = new
    return m.float()
