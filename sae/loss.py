"""The training loss of the SAE: reconstruction MSE, the aux-k loss that revives dead latents, and the
L1 penalty of the ReLU variant. Everything is measured in normalised space."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sae.model import ForwardOutput, SparseAutoencoder
from sae.sparse import EAGER, Kernels


class LossOutput(NamedTuple):
    """One batch's loss and the figures a trainer logs."""

    loss: Tensor     # () the total to backpropagate: mse + aux_coeff * aux_mse (+ l1_coeff * l1 for relu)
    mse: Tensor      # () element-mean squared error of x_hat_n against x_n
    aux_mse: Tensor  # () element-mean squared error of the aux reconstruction of the residual (0 if unused)
    fvu: Tensor      # () sum((x_n - x_hat_n)^2) / sum((x_n - batch mean of x_n)^2)
    l0: Tensor       # () mean number of latents with a positive activation per row
    fired: Tensor    # (d_sae,) bool: latents with a positive activation somewhere in this batch
    l1: Tensor       # () mean over rows of sum_i h_i * ||W_dec[i]|| for relu (its penalty), of sum_i h_i otherwise


def aux_reconstruction(sae: SparseAutoencoder, out: ForwardOutput, dead_mask: Tensor, k_aux: int,
                       kernels: Kernels = EAGER) -> Tensor:
    """Decode in each row the k_aux dead latents with the largest pre-activations (all of them if no more are
    dead; ReLU) -> (rows, d_in), WITHOUT b_pre: it models the residual x_n - x_hat_n (OpenAI TopK paper, A.2)."""
    dead = dead_mask.nonzero().squeeze(1)                         # (n_dead,)
    if len(dead) <= k_aux:
        indices = dead.expand(out.pre.shape[0], -1).contiguous()
    else:
        indices = dead[out.pre.detach().index_select(-1, dead).topk(k_aux, dim=-1, sorted=False).indices]
    values = kernels.latent_pre(sae, out, indices).relu()       # differentiable in the encoder
    return kernels.decode_residual(sae, values, indices)


def sae_loss(sae: SparseAutoencoder, x: Tensor, *, dead_mask: Tensor | None = None,
             aux_gate_requires_k_aux_dead: bool = False, kernels: Kernels = EAGER) -> LossOutput:
    """Forward `x` (rows, d_in) raw and compute the loss (weights from the SAE's config: l1_coeff,
    k_aux, aux_coeff), through `kernels` (sae/sparse.py: the SAE's eager methods, or the sparse kernels).

    dead_mask (d_sae,) bool marks latents the trainer considers dead (silent for its threshold of steps);
    the aux-k term is added when any are dead, or, with `aux_gate_requires_k_aux_dead` (the reference
    design's gate), only when at least k_aux are.
    """
    cfg = sae.cfg
    out = kernels.forward(sae, x.reshape(-1, cfg.d_in))
    err = out.x_hat_n - out.x_n                                  # (rows, d_in)
    sq = err.pow(2)
    mse = sq.mean()
    with torch.no_grad():
        total_var = (out.x_n - out.x_n.mean(0)).pow(2).sum().clamp_min(torch.finfo(err.dtype).tiny)
        fvu = sq.sum() / total_var
        active = out.values > 0
        l0 = active.sum(-1).float().mean()
        fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[out.indices[active]] = True
    if cfg.activation == "relu":  # the one activation whose sparsity comes from an L1 penalty
        l1 = (out.values * sae.W_dec.norm(dim=1)[out.indices]).sum(-1).mean()
        loss = mse + cfg.l1_coeff * l1
    else:  # decoder rows are unit-norm in training: the plain sum, without a pass over W_dec
        l1, loss = out.values.detach().sum(-1).mean(), mse
    aux_mse = torch.zeros((), dtype=mse.dtype, device=mse.device)
    n_dead = int(dead_mask.sum().item()) if dead_mask is not None else 0
    if n_dead > 0 and cfg.aux_coeff > 0 and (not aux_gate_requires_k_aux_dead or n_dead >= cfg.k_aux):
        residual = (out.x_n - out.x_hat_n).detach()              # the target must not train the main path
        aux_mse = (aux_reconstruction(sae, out, dead_mask, cfg.k_aux, kernels) - residual).pow(2).mean()
        loss = loss + cfg.aux_coeff * aux_mse
    return LossOutput(loss, mse, aux_mse.detach(), fvu, l0, fired, l1.detach())
