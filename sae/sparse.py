"""Fast sparse kernels for the TopK SAE, as autograd Functions, each with a plain eager twin.

With k of d_sae latents active, the only dense O(d_in * d_sae) work of a training step is the encoder
matmul. Everything after the TopK touches k latents per row: the k (row, latent) pairs form a sparse
matrix S (B, d_sae), and every product with it is a sparse one:
  - `topk_encode`: forward = dense matmul + TopK (on a CPU `topk_rows` ranks only the members of the k
    groups of latents with the largest maxima); backward needs the gradient only at the k selected pre-activations:
    grad W_enc = (S^T @ (x_n - b_pre))^T with S holding those gradients, grad b_enc = an `index_add_`,
    grad b_pre = -W_enc @ grad b_enc, and the input gradient (only when asked for) = S @ W_enc^T.
  - `sparse_decode`: x_hat = S @ W_dec with S holding the activations, computed as `F.embedding_bag`
    with per-sample weights; backward: grad W_dec = S^T @ grad_out and grad values = (grad_out @ W_dec^T)
    sampled at the k positions (`torch.sparse.sampled_addmm`), never a dense (B, d_sae) matrix.
  - S^T @ T is one `F.embedding_bag` over T's rows with the pairs grouped by latent (`LatentGroups`), or for
    wide inputs' grad W_enc a CSR product written straight into W_enc's layout; the grouping (a sort of the
    B*k indices) is done once per batch and shared by both backward passes.
  - `gather_encode`: the aux-k loss's dead latents (B, k_aux) read from `pre` with the same sparse backward
    as `topk_encode`, so a step with dead latents stays free of dense products too.
sparsify (EleutherAI) and OpenAI's Triton kernels use the same decomposition. The eager twins
(`topk_encode_eager`, `sparse_decode_eager`) are the plain autograd formulas the tests hold them to.

The SAE itself (sae/model.py) is the eager formula. Whoever builds a trainer picks once how a training
pass computes it: `kernels_for(sae, autocast=...)` returns `SPARSE` (`sparse_forward`, `sparse_latent_pre` and
`sparse_decode_residual`, through these kernels) or `EAGER` (the SAE's own methods), and the loss
(`sae_loss(..., kernels=...)`) calls what it was given.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sae.model import ForwardOutput, SparseAutoencoder


def _sparse_csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    # CSR is documented as beta; the products used here are the long-supported ones (CPU and CUDA).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _csr(indices: Tensor, values: Tensor, n_cols: int) -> Tensor:
    """The sparse (B, n_cols) matrix with values[b, j] at column indices[b, j]; indices (B, k) must be
    sorted along each row (CSR's invariant, which cuSPARSE relies on)."""
    rows, k = indices.shape
    crow = torch.arange(0, rows * k + 1, k, device=indices.device)
    return _sparse_csr(crow, indices.reshape(-1), values.reshape(-1), (rows, n_cols))


_GROUP = 8  # entries per group in `topk_rows`
_EMBEDDING_BAG_MAX_D_IN = 1024  # widest input whose grad W_enc goes through `LatentGroups.product`
_SPARSE_GATHER_MAX_SHARE = 10   # `sparse_latent_pre` goes sparse while w x this <= d_sae


def topk_rows(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """pre (B, n) -> (values, indices) (B, k), unsorted: the same selection as `pre.topk(k, dim=-1)` (up to ties).

    On a CPU torch ranks every entry of a row (a partial sort of (value, index) pairs). Split a row into groups
    of _GROUP: its k largest lie in the k groups with the largest maxima (a group holding one of them is beaten
    only by groups holding a larger entry, fewer than k). So one max per group, a TopK of the n / _GROUP maxima
    and a TopK of the k * _GROUP candidates find them. Group j holds the entries j + m * n / _GROUP (strided),
    so the maxima are an elementwise max of _GROUP contiguous slices. Other devices, and rows shorter than
    64 k (where torch's TopK leaves its partial sort), take torch's TopK.
    """
    rows, n = pre.shape
    if pre.device.type != "cpu" or n % _GROUP or n < 64 * k:
        return pre.topk(k, dim=-1, sorted=False)
    n_groups = n // _GROUP
    maxima = pre.view(rows, _GROUP, n_groups).amax(1)                                 # (B, n_groups)
    best = maxima.topk(k, dim=-1, sorted=False).indices                                # (B, k) group ids
    members = torch.arange(0, n, n_groups, device=pre.device)                          # (_GROUP,) offsets
    candidates = (best.unsqueeze(-1) + members).view(rows, k * _GROUP)                # (B, k * _GROUP) latent ids
    values, pos = pre.gather(1, candidates).topk(k, dim=-1, sorted=False)
    return values, candidates.gather(1, pos)


class LatentGroups:
    """One batch's (row, latent) pairs grouped by latent, for products S^T @ T with S (B, n_latents) holding
    weights (B, k) at indices (B, k). The grouping is made on first use and reused: the encoder's and the
    decoder's backward share it (both see the same indices)."""

    def __init__(self, n_latents: int):
        self.n_latents = n_latents
        self._grouping: tuple[Tensor, Tensor, Tensor] | None = None

    def _group(self, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (order of the B*k pairs by latent, their rows, crow: latent i's pairs are crow[i]:crow[i + 1])."""
        if self._grouping is None:
            flat = indices.reshape(-1)                                      # (B * k,)
            # Sorting a (1, B*k) view takes the per-row sort; torch's parallel 1-D integer sort was 5-20x
            # slower on 2 CPU threads. Stable: each latent's rows stay ascending, the sums deterministic.
            order = torch.argsort(flat.view(1, -1), dim=1, stable=True).view(-1)
            crow = torch.zeros(self.n_latents + 1, dtype=torch.int64, device=indices.device)
            torch.cumsum(torch.bincount(flat, minlength=self.n_latents), 0, out=crow[1:])
            self._grouping = (order, order // indices.shape[1], crow)
        return self._grouping

    def product(self, indices: Tensor, weights: Tensor, table: Tensor) -> Tensor:
        """table (B, n) -> S^T @ table (n_latents, n): each latent's weighted sum of the table rows that use
        it, one `F.embedding_bag`."""
        order, rows, crow = self._group(indices)
        return F.embedding_bag(rows, table, crow[:-1], per_sample_weights=weights.reshape(-1)[order], mode="sum")

    def transposed(self, indices: Tensor, weights: Tensor) -> Tensor:
        """S^T as a sparse CSR (n_latents, B) matrix."""
        order, rows, crow = self._group(indices)
        return _sparse_csr(crow, rows, weights.reshape(-1)[order], (self.n_latents, indices.shape[0]))


def _sorted(indices: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort each row by latent index -> (indices, values, order) with indices = input.gather(-1, order)."""
    indices, order = indices.sort(dim=-1)
    return indices, values.gather(-1, order), order


class _TopKEncode(torch.autograd.Function):
    """(x_n, W_enc, b_enc, b_pre, h_bias, k, groups) -> (values, indices, pre); see `topk_encode`."""

    @staticmethod
    def forward(ctx, x_n, W_enc, b_enc, b_pre, h_bias, k, groups):
        x_c = x_n - b_pre                                          # (B, d_in)
        bias = b_enc + h_bias                                      # (d_sae,)
        pre = torch.addmm(bias, x_c, W_enc)                         # (B, d_sae): the one dense matmul
        top, indices = topk_rows(pre, k)                             # (B, k)
        indices, top, _ = _sorted(indices, top)                      # ascending latent index per row
        values = top.relu()
        ctx.save_for_backward(x_c, W_enc, indices, values)
        ctx.groups = groups if groups is not None else LatentGroups(W_enc.shape[1])
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)
        return values, indices, pre

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_pre):
        x_c, W_enc, indices, values = ctx.saved_tensors
        g = grad_values * (values > 0) if grad_values is not None else torch.zeros_like(values)  # ReLU'
        need_x, need_b_pre, need_h = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        if grad_pre is None:
            grad_xc, grad_W, grad_b = _encoder_grads(x_c, W_enc, indices, g, ctx.groups, need_x=need_x)
        else:
            # Something used the dense pre-activations with a gradient: dense products (the aux-k loss does
            # not: it takes its latents through `gather_encode`).
            dense = grad_pre.scatter_add(1, indices, g)            # (B, d_sae)
            grad_xc, grad_W, grad_b = dense @ W_enc.t() if need_x else None, x_c.t() @ dense, dense.sum(0)
        return grad_xc, grad_W, grad_b, _b_pre_grad(grad_xc, W_enc, grad_b, need_b_pre), \
            grad_b if need_h else None, None, None


def _b_pre_grad(grad_xc: Tensor | None, W_enc: Tensor, grad_b: Tensor, needed: bool) -> Tensor | None:
    # x_c = x_n - b_pre: the rows' input gradients summed, = (sum_b G_b) @ W_enc^T = W_enc @ grad b_enc
    if not needed:
        return None
    return -(grad_xc.sum(0) if grad_xc is not None else W_enc @ grad_b)


def _encoder_grads(x_c: Tensor, W_enc: Tensor, indices: Tensor, g: Tensor, groups: LatentGroups, *,
                   need_x: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """The encoder's sparse backward, for the gradient g (B, w) of pre-activations taken at indices (B, w)
    (ascending along each row) -> (grad x_c (B, d_in) or None, grad W_enc, grad (b_enc + h_bias))."""
    d_sae = W_enc.shape[1]
    # (S^T @ x_c)^T into W_enc's (d_in, d_sae) layout: narrow inputs through the embedding_bag product and
    # a transposing copy, wide ones through the CSR product written into the transposed layout (the faster
    # of the two on either side, measured on a CPU: docs/ARCHITECTURE.md)
    grad_W = torch.empty_like(W_enc, memory_format=torch.contiguous_format)
    if x_c.shape[1] <= _EMBEDDING_BAG_MAX_D_IN:
        grad_W.copy_(groups.product(indices, g, x_c).t())
    else:
        torch.mm(groups.transposed(indices, g), x_c, out=grad_W.t())
    grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, indices.reshape(-1), g.reshape(-1))
    grad_xc = _csr(indices, g, d_sae) @ W_enc.t() if need_x else None
    return grad_xc, grad_W, grad_b


def topk_encode(x_n: Tensor, W_enc: Tensor, b_enc: Tensor, b_pre: Tensor, h_bias: Tensor,
                k: int, groups: LatentGroups | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """TopK encoder with a sparse backward.

    x_n (B, d_in), W_enc (d_in, d_sae), b_enc/h_bias (d_sae,), b_pre (d_in,) ->
    values (B, k) = ReLU of the k largest pre-activations, indices (B, k) int64 ascending along each row,
    pre (B, d_sae). `pre` is differentiable too, through dense products (the aux-k loss reads its latents
    through `gather_encode` instead, which keeps the backward sparse). `groups`: shared with the `sparse_decode` of the
    same latents, so the backward passes group them by latent once.
    """
    return _TopKEncode.apply(x_n, W_enc, b_enc, b_pre, h_bias, k, groups)


def topk_encode_eager(x_n: Tensor, W_enc: Tensor, b_enc: Tensor, b_pre: Tensor, h_bias: Tensor,
                      k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The eager twin of `topk_encode`: plain autograd through matmul, topk and gather (same order)."""
    pre = (x_n - b_pre) @ W_enc + (b_enc + h_bias)
    indices = pre.detach().topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    return pre.gather(-1, indices).relu(), indices, pre


class _GatherEncode(torch.autograd.Function):
    """(x_n, W_enc, b_enc, b_pre, h_bias, pre, indices) -> pre.gather(-1, indices); see `gather_encode`."""

    @staticmethod
    def forward(ctx, x_n, W_enc, b_enc, b_pre, h_bias, pre, indices):
        ctx.save_for_backward(x_n - b_pre, W_enc, indices)
        return pre.gather(-1, indices)

    @staticmethod
    def backward(ctx, grad):
        x_c, W_enc, indices = ctx.saved_tensors
        indices, g, _ = _sorted(indices, grad)
        need_x, need_b_pre, need_h = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        grad_xc, grad_W, grad_b = _encoder_grads(x_c, W_enc, indices, g, LatentGroups(W_enc.shape[1]),
                                                 need_x=need_x)
        return grad_xc, grad_W, grad_b, _b_pre_grad(grad_xc, W_enc, grad_b, need_b_pre), \
            grad_b if need_h else None, None, None


def gather_encode(x_n: Tensor, W_enc: Tensor, b_enc: Tensor, b_pre: Tensor, h_bias: Tensor, pre: Tensor,
                  indices: Tensor) -> Tensor:
    """The pre-activations (B, w) of the latents at `indices` (B, w), read from the computed `pre` (B, d_sae)
    (which receives no gradient) but differentiable in the encoder through its sparse backward: how the
    aux-k loss takes its dead latents without a dense gradient."""
    return _GatherEncode.apply(x_n, W_enc, b_enc, b_pre, h_bias, pre.detach(), indices)


class _SparseDecode(torch.autograd.Function):
    """(values, indices, W_dec, groups) -> sum_j values[:, j] * W_dec[indices[:, j]]; see `sparse_decode`."""

    @staticmethod
    def forward(ctx, values, indices, W_dec, groups):
        out = F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")  # (B, d_in)
        ctx.save_for_backward(values, indices, W_dec)
        ctx.groups = groups if groups is not None else LatentGroups(W_dec.shape[0])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, W_dec = ctx.saved_tensors
        indices, values, order = _sorted(indices, values)
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            pattern = _csr(indices, torch.zeros_like(values), W_dec.shape[0])  # beta=0 still reads it
            # (grad_out @ W_dec^T) evaluated only at the k positions of each row
            sampled = torch.sparse.sampled_addmm(pattern, grad_out, W_dec.t(), beta=0.0)
            grad_values = torch.empty_like(values).scatter_(-1, order, sampled.values().view_as(values))
        if ctx.needs_input_grad[2]:
            grad_W = ctx.groups.product(indices, values, grad_out)  # (d_sae, d_in)
        return grad_values, None, grad_W, None


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor, groups: LatentGroups | None = None) -> Tensor:
    """values, indices (B, k), W_dec (d_sae, d_in) -> (B, d_in) = sum of k weighted rows, no bias. `groups`:
    see `topk_encode`."""
    return _SparseDecode.apply(values, indices, W_dec, groups)


def sparse_decode_eager(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """The eager twin of `sparse_decode`: gather the k rows and sum them, plain autograd."""
    return (values.unsqueeze(-1) * W_dec[indices]).sum(-2)


# ---- the choice a trainer makes -----------------------------------------------------------------

class Kernels(NamedTuple):
    """How a training pass computes the SAE: its forward, and for the aux-k loss the pre-activations of
    chosen latents and their decoding without b_pre. Both give the same results (up to float rounding); they differ in speed and dtypes."""

    forward: Callable[[SparseAutoencoder, Tensor], ForwardOutput]  # (sae, x (rows, d_in)) -> sae(x)
    latent_pre: Callable[[SparseAutoencoder, ForwardOutput, Tensor], Tensor]  # (sae, out, indices) -> pre there
    decode_residual: Callable[[SparseAutoencoder, Tensor, Tensor], Tensor]  # (sae, values, indices) -> (rows, d_in)


def sparse_forward(sae: SparseAutoencoder, x: Tensor) -> ForwardOutput:
    """`sae(x)` for x (rows, d_in) through the kernels: TopK's encoder (the other activations select on
    the eager pre-activations) and the sparse decoder."""
    x_n, ctx = sae.normalize(x)
    groups = LatentGroups(sae.cfg.d_sae)  # filled by the first backward that needs it
    if sae.cfg.activation == "topk":
        values, indices, pre = topk_encode(x_n, sae.W_enc, sae.b_enc, sae.b_pre, sae.h_bias, sae.cfg.k, groups)
    else:
        pre = sae.pre_activations(x_n)
        values, indices = sae.select(pre)
    x_hat_n = sparse_decode(values, indices, sae.W_dec, groups) + sae.b_pre
    return ForwardOutput(sae.normalization.inverse(x_hat_n, ctx), x_hat_n, x_n, values, indices, pre)


def sparse_latent_pre(sae: SparseAutoencoder, out: ForwardOutput, indices: Tensor) -> Tensor:
    """`out.pre.gather(-1, indices)` for indices (rows, w): through `gather_encode` for up to a tenth of the
    latents per row, beyond which the dense products are faster (measured on a CPU: docs/ARCHITECTURE.md)."""
    if indices.shape[-1] * _SPARSE_GATHER_MAX_SHARE > sae.cfg.d_sae:
        return out.pre.gather(-1, indices)
    return gather_encode(out.x_n, sae.W_enc, sae.b_enc, sae.b_pre, sae.h_bias, out.pre, indices)


def sparse_decode_residual(sae: SparseAutoencoder, values: Tensor, indices: Tensor) -> Tensor:
    """`sae.decode_normalized(values, indices, bias=False)` for (rows, w) latents, through `sparse_decode`."""
    return sparse_decode(values, indices, sae.W_dec)


def eager_forward(sae: SparseAutoencoder, x: Tensor) -> ForwardOutput:
    return sae(x)


def eager_latent_pre(sae: SparseAutoencoder, out: ForwardOutput, indices: Tensor) -> Tensor:
    return out.pre.gather(-1, indices)


def eager_decode_residual(sae: SparseAutoencoder, values: Tensor, indices: Tensor) -> Tensor:
    return sae.decode_normalized(values, indices, bias=False)


EAGER = Kernels(eager_forward, eager_latent_pre, eager_decode_residual)     # the SAE's own formula (sae/model.py)
SPARSE = Kernels(sparse_forward, sparse_latent_pre, sparse_decode_residual)  # the autograd Functions above


def kernels_for(sae: SparseAutoencoder, *, autocast: bool) -> Kernels:
    """SPARSE where the kernels apply, else EAGER. torch's sparse CSR products (sampled_addmm, CSR @ dense)
    take float32/float64 only on CPU, so half-precision SAEs and autocast regions take the eager path."""
    return SPARSE if not autocast and sae.W_dec.dtype in (torch.float32, torch.float64) else EAGER
