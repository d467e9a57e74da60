"""The sparse autoencoder: a TopK SAE (and its ReLU / JumpReLU / BatchTopK variants) in one module.

    x_n   = normalization(x)                              # sae/normalization.py, fitted to the data
    pre   = (x_n - b_pre) @ W_enc + b_enc + h_bias        # (..., d_sae)
    h     = ReLU(TopK_k(pre))                             # k (value, index) pairs per row (sae/activations.py)
    x^_n  = h @ W_dec + b_pre                             # decoded from the k rows of W_dec only
    x^    = normalization.inverse(x^_n)

`encode`, `decode` and `forward` work in raw activation space; the losses in normalised space (`forward`
returns both). `h_bias` is zero in training; a saved SAE may carry one (added before the TopK, it pushes
a latent into the top k). The trainer keeps decoder rows at unit norm (`project_decoder_grads`,
`set_decoder_norm_to_unit_norm`), and may swap in sae/sparse.py's kernels: the same results, a sparse backward.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae import activations
from sae.activations import TopKOutput
from sae.config import SAEConfig
from sae.normalization import NormContext, make_normalization


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
    fitted statistics (`normalization.*`), so `state_dict()` is the whole SAE.
    """

    def __init__(self, cfg: SAEConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if not cfg.is_complete:
            raise ValueError(f"an SAE needs d_in and d_sae greater than 0, got {cfg.d_in} and {cfg.d_sae}")
        self.cfg = cfg
        kw = {"device": device, "dtype": dtype}
        self.normalization = make_normalization(cfg.normalization, cfg.d_in, eps=cfg.norm_eps, **kw)
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, **kw))
        self.b_pre = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        self.register_buffer("h_bias", torch.zeros(cfg.d_sae, **kw))
        if cfg.activation == "jumprelu":
            self.register_buffer("threshold", torch.zeros(cfg.d_sae, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """W_enc uniform in +-1/sqrt(d_in) (nn.Linear's init), W_dec its transpose at unit rows; zero biases.
        sparsify's initial dictionary: fewer dead latents than an orthogonal one (docs/train.md)."""
        if self.W_enc.is_meta:  # built only to receive loaded weights
            return
        self.W_enc.uniform_(-self.cfg.d_in ** -0.5, self.cfg.d_in ** -0.5)
        self.W_dec.copy_(self.W_enc.t())
        self.set_decoder_norm_to_unit_norm()
        self.b_enc.zero_()
        self.b_pre.zero_()

    # ---- the normalisation, fitted to the data -------------------------------------------------

    def normalize(self, x: Tensor) -> tuple[Tensor, NormContext]:
        """Raw x (..., d_in) -> (x_n, ctx): what the SAE reads, and what maps it back (`normalization.inverse`)."""
        return self.normalization(x)

    @torch.no_grad()
    def set_normalization_stats(self, *, mean: Tensor | None = None, mean_sq_norm: float | None = None) -> None:
        """Fit the normalisation from raw-data statistics (dataset_scale needs `mean_sq_norm`,
        mean_centred_unit_norm needs `mean`, the others nothing)."""
        self.normalization.fit(mean=mean, mean_sq_norm=mean_sq_norm)

    @torch.no_grad()
    def normalized_mean(self, batches: Iterable[Tensor]) -> Tensor:
        """Mean of normalize(x) over raw batches (rows, d_in), accumulated in float64 -> (d_in,)."""
        total, rows = torch.zeros(self.cfg.d_in, dtype=torch.float64, device=self.b_pre.device), 0
        for x in batches:
            x_n = self.normalize(x.to(self.b_pre))[0].reshape(-1, self.cfg.d_in)
            total, rows = total + x_n.sum(0, dtype=torch.float64), rows + x_n.shape[0]
        if rows == 0:
            raise ValueError("normalized_mean needs at least one non-empty batch")
        return (total / rows).to(self.b_pre.dtype)

    @torch.no_grad()
    def init_from_data(self, mean_n: Tensor) -> None:
        """b_pre = the mean of the NORMALISED data (the space where b_pre is applied)."""
        self.b_pre.copy_(mean_n)

    # ---- the formula, in normalised space ------------------------------------------------------

    def pre_activations(self, x_n: Tensor) -> Tensor:
        """x_n (..., d_in) -> pre (..., d_sae) = (x_n - b_pre) @ W_enc + b_enc + h_bias."""
        return (x_n - self.b_pre) @ self.W_enc + (self.b_enc + self.h_bias)

    def select(self, pre: Tensor) -> TopKOutput:
        """pre (..., d_sae) -> the active latents of cfg.activation (sae/activations.py)."""
        act, k = self.cfg.activation, self.cfg.k
        if act == "topk":
            return activations.topk(pre, k)  # h = ReLU(TopK_k(pre)): the k largest, negatives clamped to 0
        if act == "batchtopk":
            return activations.batchtopk(pre, k)
        if act == "topk_decnorm":
            return activations.topk_decnorm(pre, k, decoder_norms=self.W_dec.detach().norm(dim=1))
        if act == "jumprelu":
            return activations.jumprelu(pre, self.threshold)
        return activations.relu(pre)

    def decode_normalized(self, values: Tensor, indices: Tensor, *, bias: bool = True) -> Tensor:
        """(values, indices) (..., w) -> x_hat_n (..., d_in) = sum_j values_j W_dec[indices_j] (+ b_pre):
        the w selected decoder rows only. `bias=False` leaves out b_pre (the aux-k loss models a residual)."""
        lead, width = values.shape[:-1], values.shape[-1]
        rows = F.embedding_bag(indices.reshape(-1, width), self.W_dec, per_sample_weights=values.reshape(-1, width),
                               mode="sum")  # (rows, d_in): sparsify's eager decode
        return (rows + self.b_pre if bias else rows).reshape(*lead, self.cfg.d_in)

    # ---- the same in raw space -----------------------------------------------------------------

    def encode(self, x: Tensor) -> TopKOutput:
        """Raw x (..., d_in) -> the active latents: TopKOutput(values (..., k), indices (..., k))."""
        return self.select(self.pre_activations(self.normalize(x)[0]))

    def decode(self, values: Tensor, indices: Tensor, x: Tensor | None = None) -> Tensor:
        """Latents (..., w) -> raw-space reconstruction (..., d_in). Per-token normalisations map back
        with the statistics of the raw input `x` the latents were encoded from (required for them)."""
        return self.normalization.inverse(self.decode_normalized(values, indices), self.normalization.context(x))

    def forward(self, x: Tensor) -> ForwardOutput:
        """Raw x (..., d_in) -> ForwardOutput (reconstruction in raw and normalised space, latents)."""
        x_n, ctx = self.normalize(x)
        pre = self.pre_activations(x_n)
        values, indices = self.select(pre)
        x_hat_n = self.decode_normalized(values, indices)
        return ForwardOutput(self.normalization.inverse(x_hat_n, ctx), x_hat_n, x_n, values, indices, pre)

    def to_dense(self, latents: TopKOutput) -> Tensor:
        """(values, indices) (..., w) -> dense latent activations (..., d_sae), zero outside the active set."""
        values, indices = latents
        dense = torch.zeros(*values.shape[:-1], self.cfg.d_sae, dtype=values.dtype, device=values.device)
        return dense.scatter(-1, indices, values)

    # ---- decoder upkeep ------------------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Rescale every decoder ROW (one per latent) to unit L2 norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grads(self) -> None:
        """Remove from W_dec.grad the component parallel to each decoder row (per latent), so a step
        moves along the unit sphere rather than changing the row's norm."""
        grad, w = self.W_dec.grad, self.W_dec
        if grad is None:
            return
        parallel = torch.einsum("ij,ij->i", grad, w) / w.norm(dim=1).square().clamp_min(1e-12)  # (d_sae,), no temporary
        grad.addcmul_(w, parallel.unsqueeze(1), value=-1.0)  # in place: no (d_sae, d_in) temporary

    @torch.no_grad()
    def decoder_direction(self, idx: int) -> Tensor:
        """The raw-space direction (d_in,) in which latent `idx` moves the reconstruction per unit of activation;
        for the per-token normalisations (which scale it by each token's std or norm) the unscaled row."""
        if not 0 <= idx < self.cfg.d_sae:
            raise ValueError(f"latent index {idx} is out of range [0, {self.cfg.d_sae})")
        row = self.W_dec[idx]
        return row * self.normalization.context().scale if self.normalization.linear else row.clone()
