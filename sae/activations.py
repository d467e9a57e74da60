"""Sparse activation functions: which latents fire, and with what value.

Every function takes the pre-activations `pre (..., d_sae)` and returns a `TopKOutput` whose `values`
and `indices` have one fixed width per call: k for TopK, the largest number of active latents in any
row for the others (rows with fewer are padded with value 0, which decodes to nothing). Gradients
reach `pre` only at the selected positions, through `gather`.

Each takes exactly what it uses (k, per-latent thresholds, decoder-row norms); `SparseAutoencoder.select`
picks the one its config names. `jumprelu_thresholds` turns a trained TopK SAE into a JumpReLU one, as
Llama Scope does after training. Only "relu" trains with an L1 penalty (sae/loss.py).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from torch import Tensor

ACTIVATIONS = ("topk", "batchtopk", "topk_decnorm", "relu", "jumprelu")  # the names SAEConfig allows


class TopKOutput(NamedTuple):
    """The active latents of each row, in no particular order."""

    values: Tensor   # (..., width) activation of each selected latent, >= 0 (0 where a row is padded)
    indices: Tensor  # (..., width) int64 latent index of each value


def topk(pre: Tensor, k: int) -> TopKOutput:
    """h = ReLU(TopK_k(pre)): the k largest pre-activations of each row, negatives clamped to 0; indices
    ascend along each row (as the sparse kernel returns them)."""
    indices = pre.detach().topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values  # (..., k)
    return TopKOutput(pre.gather(-1, indices).relu(), indices)


def topk_decnorm(pre: Tensor, k: int, decoder_norms: Tensor) -> TopKOutput:
    """TopK that ranks latents by activation x decoder-row norm (Llama Scope); the values stay ReLU(pre)."""
    score = pre.detach().relu() * decoder_norms  # (..., d_sae)
    indices = score.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
    return TopKOutput(pre.gather(-1, indices).relu(), indices)


def _select_masked(pre: Tensor, mask: Tensor) -> TopKOutput:
    """Every position where `mask` holds, padded to the largest count of any row."""
    width = max(1, int(mask.sum(-1).max().item())) if mask.numel() else 1
    score = torch.where(mask, pre.detach(), torch.full_like(pre, -torch.inf))
    _, indices = score.topk(width, dim=-1, sorted=False)  # (..., width)
    keep = mask.gather(-1, indices)
    return TopKOutput(pre.gather(-1, indices) * keep, indices)


def batchtopk(pre: Tensor, k: int) -> TopKOutput:
    """BatchTopK (Bussmann et al. 2024): the k x rows largest ReLU(pre) of the whole batch, so rows share a
    budget of k on average."""
    flat = pre.detach().relu().reshape(-1, pre.shape[-1])  # (rows, d_sae)
    budget = min(k * flat.shape[0], flat.numel())
    cutoff = flat.flatten().topk(budget, sorted=False).values.min()
    return _select_masked(pre, (pre.detach() >= cutoff) & (pre.detach() > 0))


def relu(pre: Tensor) -> TopKOutput:
    """ReLU: every positive pre-activation (sparsity comes from an L1 penalty in the loss)."""
    return _select_masked(pre, pre.detach() > 0)


def jumprelu(pre: Tensor, threshold: Tensor) -> TopKOutput:
    """JumpReLU: pre where pre > threshold (per latent, shape (d_sae,)), else 0."""
    return _select_masked(pre, pre.detach() > threshold)


@torch.no_grad()
def jumprelu_thresholds(pre_batches: Iterable[Tensor], k: int, decoder_norms: Tensor) -> Tensor:
    """Per-latent JumpReLU thresholds (d_sae,) for a TopK-trained SAE, as Llama Scope derives them.

    Over the given pre-activation batches `(rows, d_sae)`, one global cutoff t on the score
    ReLU(pre) x ||W_dec[i]|| is chosen so that k latents per row pass on average (the batch-level TopK
    cutoff); latent i then fires when pre_i > t / ||W_dec[i]||. With unit decoder rows every latent
    shares the same threshold t. The cutoff is the mean of the per-batch cutoffs.
    """
    cutoffs = []
    for pre in pre_batches:
        score = (pre.relu() * decoder_norms).reshape(-1, pre.shape[-1]).float()
        budget = min(k * score.shape[0], score.numel())
        cutoffs.append(score.flatten().topk(budget, sorted=False).values.min())
    if not cutoffs:
        raise ValueError("jumprelu_thresholds needs at least one batch of pre-activations")
    cutoff = torch.stack(cutoffs).mean()
    return cutoff / decoder_norms.clamp_min(1e-8)
