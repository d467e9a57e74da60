"""The sparse autoencoder: a TopK SAE (and its ReLU / JumpReLU / BatchTopK variants) in one module.

    x_n   = normalization(x)                              # sae/normalization.py, fitted to the data
    pre   = (x_n - b_pre) @ W_enc + b_enc + h_bias        # (..., d_sae)
    h     = TopK_k(ReLU(pre))                             # k (value, index) pairs per row (sae/activations.py)
    x^_n  = h @ W_dec + b_pre                             # decoded from the k rows of W_dec only
    x^    = normalization.inverse(x^_n)

`encode` and `decode` work in the model's raw activation space, as `forward` does; the losses work in
normalised space (`forward` returns both). `h_bias` is zero in training; a saved SAE may carry one, and
because it is added before the TopK a latent pushed through it enters the top k. Decoder rows (one per
latent) are kept at unit norm by the trainer through `project_decoder_grads` (before the optimiser step)
and `set_decoder_norm_to_unit_norm` (after it).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from torch import Tensor, nn

from sae import sparse
from sae.activations import ACTIVATIONS, TopKOutput
from sae.config import SAEConfig
from sae.normalization import make_normalization


class ForwardOutput(NamedTuple):
    """Everything a training step or an analysis needs from one pass."""

    x_hat: Tensor    # (..., d_in) reconstruction in the model's raw activation space
    x_hat_n: Tensor  # (..., d_in) reconstruction in normalised space (where losses are computed)
    x_n: Tensor      # (..., d_in) the normalised input
    values: Tensor   # (..., width) activations of the selected latents (width k for TopK)
    indices: Tensor  # (..., width) their latent indices (int64)
    pre: Tensor      # (..., d_sae) pre-activations, h_bias included (the aux-k loss ranks dead latents here)


class SparseAutoencoder(nn.Module):
    """TopK sparse autoencoder; see the module docstring for the formula.

    Parameters: W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in) one unit-norm row per latent,
    b_pre (d_in,). Buffers: h_bias (d_sae,), threshold (d_sae,) for JumpReLU, and the normalisation's
    fitted statistics (`normalization.*`), so `state_dict()` is the whole SAE. `use_sparse_kernels` picks
    the fast autograd Functions of `sae.sparse` for TopK (default; float32/float64) or the plain eager
    path; both give the same results and gradients. Half-precision SAEs always take the eager path.
    """

    def __init__(self, cfg: SAEConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if not cfg.is_complete:
            raise ValueError(f"an SAE needs d_in and d_sae greater than 0, got {cfg.d_in} and {cfg.d_sae}")
        self.cfg = cfg
        kw = {"device": device, "dtype": dtype}
        self.normalization = make_normalization(cfg.normalization, cfg.d_in, eps=cfg.norm_eps, **kw)
        self.activation = ACTIVATIONS[cfg.activation]
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, **kw))
        self.b_pre = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        self.register_buffer("h_bias", torch.zeros(cfg.d_sae, **kw))
        if cfg.activation == "jumprelu":
            self.register_buffer("threshold", torch.zeros(cfg.d_sae, **kw))
        self.use_sparse_kernels = True
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Orthogonal W_enc, W_dec = W_enc^T with unit rows (then W_enc = W_dec^T); zero biases."""
        if self.W_enc.is_meta:  # built only to receive loaded weights
            return
        q = nn.init.orthogonal_(torch.empty(self.cfg.d_in, self.cfg.d_sae, device=self.W_enc.device))  # QR in fp32
        self.W_dec.copy_(q.t())
        self.set_decoder_norm_to_unit_norm()
        self.W_enc.copy_(self.W_dec.t())
        self.b_enc.zero_()
        self.b_pre.zero_()

    # ---- fitting to the data -------------------------------------------------------------------

    @torch.no_grad()
    def set_normalization_stats(self, *, mean: Tensor | None = None, mean_sq_norm: float | None = None) -> None:
        """Fit the normalisation from raw-data statistics (dataset_scale needs `mean_sq_norm`,
        mean_centred_unit_norm needs `mean`, the others nothing)."""
        self.normalization.fit(mean=mean, mean_sq_norm=mean_sq_norm)

    def normalize(self, x: Tensor):
        """Raw x (..., d_in) -> (x_n, NormContext): what the SAE reads, and what maps it back."""
        return self.normalization(x)

    @torch.no_grad()
    def normalized_mean(self, batches: Iterable[Tensor]) -> Tensor:
        """Mean of normalize(x) over raw batches (rows, d_in), accumulated in float64 -> (d_in,)."""
        total = torch.zeros(self.cfg.d_in, dtype=torch.float64, device=self.b_pre.device)
        rows = 0
        for x in batches:
            x_n, _ = self.normalize(x.to(self.b_pre))
            total += x_n.reshape(-1, self.cfg.d_in).sum(0, dtype=torch.float64)
            rows += x_n.numel() // self.cfg.d_in
        if rows == 0:
            raise ValueError("normalized_mean needs at least one non-empty batch")
        return (total / rows).to(self.b_pre.dtype)

    @torch.no_grad()
    def init_from_data(self, mean_n: Tensor) -> None:
        """b_pre = the mean of the NORMALISED data (the space where b_pre is applied)."""
        self.b_pre.copy_(mean_n)

    # ---- encoder and decoder (raw space) -------------------------------------------------------

    def encode(self, x: Tensor) -> TopKOutput:
        """Raw x (..., d_in) -> the active latents: TopKOutput(values (..., k), indices (..., k))."""
        values, indices, _ = self.encode_normalized(self.normalize(x)[0])
        return TopKOutput(values, indices)

    def decode(self, values: Tensor, indices: Tensor, x: Tensor | None = None) -> Tensor:
        """Latents (..., w) -> raw-space reconstruction (..., d_in). Per-token normalisations map back
        with the statistics of the raw input `x` the latents were encoded from (required for them)."""
        return self.normalization.inverse(self.decode_normalized(values, indices),
                                          self.normalization.context(x))

    def forward(self, x: Tensor) -> ForwardOutput:
        """Raw x (..., d_in) -> ForwardOutput (reconstruction in raw and normalised space, latents)."""
        x_n, ctx = self.normalize(x)
        values, indices, pre = self.encode_normalized(x_n)
        x_hat_n = self.decode_normalized(values, indices)
        return ForwardOutput(self.normalization.inverse(x_hat_n, ctx), x_hat_n, x_n, values, indices, pre)

    def to_dense(self, latents: TopKOutput) -> Tensor:
        """(values, indices) (..., w) -> dense latent activations (..., d_sae), zero outside the active set."""
        values, indices = latents
        dense = torch.zeros(*values.shape[:-1], self.cfg.d_sae, dtype=values.dtype, device=values.device)
        return dense.scatter(-1, indices, values)

    # ---- the same in normalised space (losses, kernels) ----------------------------------------

    def _fast(self) -> bool:
        # torch's sparse CSR products (sampled_addmm, CSR @ dense) take float32/float64 only on CPU
        return self.use_sparse_kernels and self.W_dec.dtype in (torch.float32, torch.float64)

    def encode_pre(self, x_n: Tensor, push: Tensor | None = None) -> Tensor:
        """x_n (..., d_in) -> pre-activations (..., d_sae) = (x_n - b_pre) @ W_enc + b_enc + h_bias (+ push)."""
        return (x_n - self.b_pre) @ self.W_enc + self._latent_bias(push)

    def _latent_bias(self, push: Tensor | None) -> Tensor:
        return self.b_enc + self.h_bias if push is None else self.b_enc + self.h_bias + push

    def encode_normalized(self, x_n: Tensor, push: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x_n (..., d_in) -> (values (..., w), indices (..., w), pre (..., d_sae)). `push` (d_sae,) is
        added to the pre-activations before the selection (steering), leaving the SAE unchanged."""
        if self._fast() and self.cfg.activation == "topk":
            flat = x_n.reshape(-1, self.cfg.d_in)  # (rows, d_in)
            h_bias = self.h_bias if push is None else self.h_bias + push
            values, indices, pre = sparse.topk_encode(flat, self.W_enc, self.b_enc, self.b_pre, h_bias, self.cfg.k)
            lead = x_n.shape[:-1]
            return values.reshape(*lead, -1), indices.reshape(*lead, -1), pre.reshape(*lead, -1)
        pre = self.encode_pre(x_n, push)
        values, indices = self.activation.select(pre, self)
        return values, indices, pre

    def decode_normalized(self, values: Tensor, indices: Tensor, *, bias: bool = True) -> Tensor:
        """(values, indices) (..., w) -> x_hat_n (..., d_in) from the w selected decoder rows only;
        `bias=False` leaves out b_pre (the aux-k loss models a residual, which has no bias)."""
        lead = values.shape[:-1]
        flat_v, flat_i = values.reshape(-1, values.shape[-1]), indices.reshape(-1, indices.shape[-1])
        decode = sparse.sparse_decode if self._fast() else sparse.sparse_decode_eager
        out = decode(flat_v, flat_i, self.W_dec)
        return (out + self.b_pre if bias else out).reshape(*lead, self.cfg.d_in)

    # ---- decoder upkeep ------------------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Rescale every decoder ROW (one per latent) to unit L2 norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grads(self) -> None:
        """Remove from W_dec.grad the component parallel to each decoder row (per latent), so a step
        moves along the unit sphere rather than changing the row's norm."""
        grad = self.W_dec.grad
        if grad is None:
            return
        w = self.W_dec
        parallel = torch.linalg.vecdot(grad, w, dim=1) / w.norm(dim=1).square().clamp_min(1e-12)  # (d_sae,)
        grad.addcmul_(w, parallel.unsqueeze(1), value=-1.0)  # in place: no (d_sae, d_in) temporary

    # ---- analysis helpers ----------------------------------------------------------------------

    @torch.no_grad()
    def decoder_direction(self, idx: int) -> Tensor:
        """The raw-space direction (d_in,) in which latent `idx` moves the reconstruction per unit of
        activation. Exact for the linear normalisations (dataset_scale, none); for the per-token ones
        (token_standardize, mean_centred_unit_norm) the row is scaled by each token's std or norm, so
        this returns the unscaled row."""
        if not 0 <= idx < self.cfg.d_sae:
            raise ValueError(f"latent index {idx} is out of range [0, {self.cfg.d_sae})")
        row = self.W_dec[idx]
        return row * self.normalization.context().scale if self.normalization.linear else row.clone()
