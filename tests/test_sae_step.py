"""The training step's fast parts at widths where every shortcut is taken: the grouped TopK selection, the
by-latent products of the sparse backward and the decoder upkeep, against torch's plain ops and a
float64 brute-force loss."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train
from sae import SAEConfig, SparseAutoencoder, sparse
from sae.loss import sae_loss
from sae.sparse import EAGER, SPARSE
from train_helpers import planted_batches
from training.config import TrainConfig

B, D_IN, D_SAE, K = 64, 24, 2048, 8  # d_sae >= 64 k: the grouped selection applies


class OpLog(TorchDispatchMode):
    """Records (op name, input shapes, shapes of outputs in new memory) of every aten op run inside it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = lambda xs: [tuple(x.shape) for x in xs if isinstance(x, torch.Tensor)]  # noqa: E731
        outs = out if isinstance(out, (tuple, list)) else [out]
        old = {x.untyped_storage().data_ptr() for x in args if isinstance(x, torch.Tensor)}
        new = [x for x in outs if isinstance(x, torch.Tensor) and x.untyped_storage().data_ptr() not in old]
        self.calls.append((func.overloadpacket.__name__, shapes(args), shapes(new)))
        return out


@pytest.mark.parametrize("k", [2, K, 64])  # 64: rows too short for the grouped selection
@pytest.mark.parametrize("case", ["random", "one_group", "ties_below", "inf"])
def test_grouped_topk_selects_what_torch_topk_selects(case, k):
    torch.manual_seed(0)
    pre = torch.randn(B, D_SAE)
    if case == "one_group":      # every winner in the same group
        pre[:, 5::D_SAE // 8][:, :min(k, 8)] += 100
    elif case == "ties_below":   # most of each row tied far below the winners
        pre[:, k * 40:] = -5.0
    elif case == "inf":
        pre[::2, 5] = torch.inf
        pre[1::2, :1000] = -torch.inf
    values, indices = sparse.topk_rows(pre, k)
    expected = pre.topk(k, dim=-1)
    torch.testing.assert_close(values.sort(-1, descending=True).values, expected.values)
    assert torch.equal(indices.sort(-1).values, expected.indices.sort(-1).values)
    assert torch.equal(pre.gather(-1, indices), values)


def test_the_encoder_never_ranks_a_whole_row_on_cpu():
    x, W_enc, b_enc, b_pre = torch.randn(B, D_IN), torch.randn(D_IN, D_SAE), torch.zeros(D_SAE), torch.zeros(D_IN)
    with OpLog() as log:
        sparse.topk_encode(x, W_enc, b_enc, b_pre, torch.zeros(D_SAE), K)
    widths = [ins[0][-1] for name, ins, _ in log.calls if name == "topk"]
    assert widths and max(widths) <= D_SAE // 8, widths


@pytest.mark.parametrize("n_cols", [D_IN, 3])
def test_latent_groups_product_is_the_transposed_sparse_product(n_cols):
    torch.manual_seed(1)
    indices = torch.stack([torch.randperm(D_SAE)[:K] for _ in range(B)])
    indices[:, 0] = 7  # a latent every row uses
    weights, table = torch.randn(B, K, dtype=torch.float64), torch.randn(B, n_cols, dtype=torch.float64)
    S = torch.zeros(B, D_SAE, dtype=torch.float64).scatter(1, indices, weights)
    groups = sparse.LatentGroups(D_SAE)
    torch.testing.assert_close(groups.product(indices, weights, table), S.t() @ table)
    torch.testing.assert_close(groups.product(indices, -weights, table), -(S.t() @ table))  # grouping reused


def brute_force_loss(params: dict[str, torch.Tensor], x: torch.Tensor, dead: torch.Tensor | None,
                     k_aux: int, aux_coeff: float) -> torch.Tensor:
    """The TopK SAE loss in float64 with dense (B, d_sae) latents: a full sort picks the k largest."""
    W_enc, b_enc, W_dec, b_pre = params["W_enc"], params["b_enc"], params["W_dec"], params["b_pre"]
    pre = (x - b_pre) @ W_enc + b_enc
    kth = pre.detach().sort(dim=-1, descending=True).values[:, K - 1:K]
    h = torch.where(pre >= kth, pre.relu(), 0.0)
    x_hat = h @ W_dec + b_pre
    loss = (x_hat - x).pow(2).mean()
    if dead is not None:
        ranked = pre.detach().masked_fill(~dead, -torch.inf)
        kth_dead = ranked.sort(dim=-1, descending=True).values[:, k_aux - 1:k_aux]
        h_aux = torch.where(ranked >= kth_dead, pre.relu(), 0.0)
        loss = loss + aux_coeff * (h_aux @ W_dec - (x - x_hat).detach()).pow(2).mean()
    return loss


@pytest.mark.parametrize("with_aux", [False, True])
def test_sparse_step_matches_eager_and_float64_brute_force(with_aux):
    """Loss and every gradient of one float32 step through the sparse kernels, against the SAE's eager formula
    in float32 and a dense float64 computation."""
    torch.manual_seed(2)
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, normalization="none", k_aux=16))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_pre.normal_(0, 0.1)
    x = torch.randn(B, D_IN)
    dead = torch.arange(D_SAE) % 3 == 0 if with_aux else None
    names = [n for n, _ in sae.named_parameters()]
    got = {}
    for label, kernels in (("sparse", SPARSE), ("eager", EAGER)):
        loss = sae_loss(sae, x, dead_mask=dead, kernels=kernels).loss
        got[label] = [loss.detach(), *torch.autograd.grad(loss, list(sae.parameters()))]
    params = {n: p.detach().double().requires_grad_() for n, p in sae.named_parameters()}
    loss = brute_force_loss(params, x.double(), dead, sae.cfg.k_aux, sae.cfg.aux_coeff)
    got["float64"] = [loss.detach(), *torch.autograd.grad(loss, [params[n] for n in names])]
    for label in ("eager", "float64"):
        for name, fast, ref in zip(["loss", *names], got["sparse"], got[label]):
            torch.testing.assert_close(fast.double(), ref.double(), rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name, r=label: f"{n} against {r}: {m}")


def test_decoder_gradient_projection_makes_no_full_size_temporary():
    torch.manual_seed(3)
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, normalization="none"))
    sae.W_dec.grad = torch.randn(D_SAE, D_IN)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)  # rows off unit norm: the division by |w|^2 matters
    w, g = sae.W_dec.detach().double(), sae.W_dec.grad.double()
    expected = g - (g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w
    with OpLog() as log:
        sae.project_decoder_grads()
    full_size = [name for name, _, outs in log.calls if (D_SAE, D_IN) in outs]
    assert not full_size, full_size
    torch.testing.assert_close(sae.W_dec.grad.double(), expected, rtol=1e-5, atol=1e-6)


def test_the_trainer_builds_a_fused_adamw(tmp_path):
    cfg = TrainConfig.of(out=str(tmp_path), expansion=4, k=3, device="cpu")
    batches = planted_batches(2, 32)
    trainer = train.build_trainer(cfg, train.sae_config(cfg, batches), batches, torch.device("cpu"), total_steps=4)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.optimizer.defaults["fused"]


def test_bench_reports_the_step_over_the_matmul_of_each_round(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import sae_train  # bench/sae_train.py
    times = {"ours": [3.0, 1.0, 8.0], "matmul": [2.0, 1.0, 4.0]}  # a load that comes and goes slows both
    results = sae_train.report(sae_train.BenchConfig(rounds=3), times, {})
    assert results["ours_over_matmul_per_round"] == [1.5, 1.0, 2.0]
    assert "same round: median 1.50x, range 1.00x-2.00x over 3 rounds" in capsys.readouterr().out


def test_bench_times_each_phase_of_the_step(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import sae_train  # bench/sae_train.py
    cfg = sae_train.BenchConfig(d_in=8, d_sae=64, k=2, batch=16, warmup=1, rounds=2)
    times = sae_train.time_phases(cfg, torch.randn(16, 8))
    assert list(times) == ["encoder matmul", "forward and loss", "backward", "decoder gradient projection",
                           "gradient clipping", "Adam", "zero_grad (frees the gradients)", "decoder renormalisation"]
    assert all(len(t) == 2 and min(t) >= 0 for t in times.values())
    sae_train.report_phases(cfg, times)
    assert "ours step (sum of the phases)" in capsys.readouterr().out


def test_the_encoder_gradient_is_the_same_through_either_product():
    """Wide inputs take the CSR product, narrow ones the embedding_bag: both give the dense formula."""
    torch.manual_seed(4)
    widest = sparse._EMBEDDING_BAG_MAX_D_IN
    for d_in in (widest + 1, widest):
        x = torch.randn(B, d_in, dtype=torch.float64)
        W = torch.randn(d_in, D_SAE, dtype=torch.float64, requires_grad=True)
        values, indices, _ = sparse.topk_encode(x, W, torch.zeros(D_SAE, dtype=torch.float64),
                                                torch.zeros(d_in, dtype=torch.float64),
                                                torch.zeros(D_SAE, dtype=torch.float64), K)
        g = torch.randn(B, K, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        grad = torch.autograd.grad((values * g).sum(), W)[0]
        expected = x.t() @ torch.zeros(B, D_SAE, dtype=torch.float64).scatter(1, indices, g * (values > 0))
        torch.testing.assert_close(grad, expected)
