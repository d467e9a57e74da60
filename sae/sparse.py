"""Fast sparse kernels for the TopK SAE, as autograd Functions, each with a plain eager twin.

With k of d_sae latents active, the only dense O(d_in * d_sae) work of a training step is the encoder
matmul. Everything downstream of the TopK touches k latents per row:
  - `topk_encode`: forward = dense matmul + topk; backward needs the gradient only at the k selected
    pre-activations, so grad W_enc is a scatter of k outer products per row (`index_add_`), grad b_enc an
    `index_add_`, and the input gradient (only when asked for) a gather of k encoder columns.
  - `sparse_decode`: x_hat = sum_j values_j * W_dec[indices_j], an `F.embedding_bag` with per-sample
    weights; backward = k dot products per row for the values and an `index_add_` for W_dec.
sparsify (EleutherAI) and OpenAI's Triton kernels use the same decomposition. The eager twins
(`topk_encode_eager`, `sparse_decode_eager`) are the plain autograd formulas the tests hold them to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ROWS = 512  # rows per chunk for the (rows, k, d_in) temporaries: ~37 MiB at k 32, d_in 576 fp32


def _scatter_outer(indices: Tensor, weights: Tensor, rows: Tensor, n_out: int) -> Tensor:
    """sum over (b, j) of weights[b, j] * rows[b] added into out[indices[b, j]] -> (n_out, d).

    indices, weights (B, k); rows (B, d). This is S^T @ rows for the sparse (B, n_out) matrix S.
    """
    out = torch.zeros(n_out, rows.shape[1], dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        end = start + CHUNK_ROWS
        w, r = weights[start:end], rows[start:end]
        outer = w.unsqueeze(-1) * r.unsqueeze(1)  # (chunk, k, d)
        out.index_add_(0, indices[start:end].reshape(-1), outer.reshape(-1, rows.shape[1]))
    return out


def _gather_dot(indices: Tensor, table: Tensor, rows: Tensor) -> Tensor:
    """out[b, j] = table[indices[b, j]] . rows[b] -> (B, k); table (n, d), rows (B, d)."""
    out = torch.empty(indices.shape, dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        end = start + CHUNK_ROWS
        gathered = F.embedding(indices[start:end], table)  # (chunk, k, d)
        out[start:end] = torch.bmm(gathered, rows[start:end].unsqueeze(-1)).squeeze(-1)
    return out


class _TopKEncode(torch.autograd.Function):
    """(x_n, W_enc, b_enc, b_pre, h_bias, k) -> (values, indices, pre); see `topk_encode`."""

    @staticmethod
    def forward(ctx, x_n, W_enc, b_enc, b_pre, h_bias, k):
        x_c = x_n - b_pre                                         # (B, d_in)
        pre = torch.addmm(b_enc + h_bias, x_c, W_enc)             # (B, d_sae): the one dense matmul
        top, indices = pre.topk(k, dim=-1, sorted=False)          # (B, k)
        values = top.relu()
        ctx.save_for_backward(x_c, W_enc, indices, values)
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)
        return values, indices, pre

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_pre):
        x_c, W_enc, indices, values = ctx.saved_tensors
        d_in, d_sae = W_enc.shape
        g = grad_values * (values > 0) if grad_values is not None else torch.zeros_like(values)  # ReLU'
        need_x = ctx.needs_input_grad[0]
        if grad_pre is not None:
            # Another loss (aux-k) used the dense pre-activations: fall back to dense products.
            dense = grad_pre.scatter_add(1, indices, g)           # (B, d_sae)
            grad_W = x_c.t() @ dense
            grad_b = dense.sum(0)
            grad_xc = dense @ W_enc.t() if need_x else None
        else:
            grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, indices.reshape(-1), g.reshape(-1))
            grad_W = _scatter_outer(indices, g, x_c, d_sae).t()  # (d_in, d_sae) view of (d_sae, d_in)
            grad_xc = F.embedding_bag(indices, W_enc.t(), per_sample_weights=g, mode="sum") if need_x else None
        grad_b_pre = None
        if ctx.needs_input_grad[3]:
            # sum_b d/dx_c = (sum_b G_b) @ W_enc^T = W_enc @ grad_b_enc
            grad_b_pre = -(grad_xc.sum(0) if grad_xc is not None else W_enc @ grad_b)
        grad_h = grad_b if ctx.needs_input_grad[4] else None
        return grad_xc, grad_W, grad_b, grad_b_pre, grad_h, None


def topk_encode(x_n: Tensor, W_enc: Tensor, b_enc: Tensor, b_pre: Tensor, h_bias: Tensor,
                k: int) -> tuple[Tensor, Tensor, Tensor]:
    """TopK encoder with a sparse backward.

    x_n (B, d_in), W_enc (d_in, d_sae), b_enc/h_bias (d_sae,), b_pre (d_in,) ->
    values (B, k) = ReLU of the k largest pre-activations, indices (B, k) int64, pre (B, d_sae).
    `pre` is differentiable too (the aux-k loss ranks and uses dead latents there); when it receives a
    gradient the backward uses dense products.
    """
    return _TopKEncode.apply(x_n, W_enc, b_enc, b_pre, h_bias, k)


def topk_encode_eager(x_n: Tensor, W_enc: Tensor, b_enc: Tensor, b_pre: Tensor, h_bias: Tensor,
                      k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The eager twin of `topk_encode`: plain autograd through matmul, topk and gather."""
    pre = (x_n - b_pre) @ W_enc + (b_enc + h_bias)
    indices = pre.detach().topk(k, dim=-1, sorted=False).indices
    return pre.gather(-1, indices).relu(), indices, pre


class _SparseDecode(torch.autograd.Function):
    """(values, indices, W_dec) -> sum_j values[:, j] * W_dec[indices[:, j]]; see `sparse_decode`."""

    @staticmethod
    def forward(ctx, values, indices, W_dec):
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")  # (B, d_in)

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, W_dec = ctx.saved_tensors
        grad_values = _gather_dot(indices, W_dec, grad_out) if ctx.needs_input_grad[0] else None
        grad_W = _scatter_outer(indices, values, grad_out, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """values, indices (B, k), W_dec (d_sae, d_in) -> (B, d_in), without a bias."""
    return _SparseDecode.apply(values, indices, W_dec)


def sparse_decode_eager(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """The eager twin of `sparse_decode`: gather the k rows and sum them, plain autograd."""
    return (values.unsqueeze(-1) * W_dec[indices]).sum(-2)
