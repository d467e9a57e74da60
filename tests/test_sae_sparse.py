"""The fast sparse kernels against their plain eager twins and a dense reference, gradients included."""

from __future__ import annotations

import pytest
import torch

from sae import SAEConfig, SparseAutoencoder, sparse
from sae.loss import aux_reconstruction, sae_loss
from sae.sparse import EAGER, SPARSE, kernels_for

B, D_IN, D_SAE, K = 48, 20, 96, 6
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                               reason="needs a CUDA device"))]


def leaf(*shape, device="cpu"):
    return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pre_gets_gradient", [False, True])
def test_topk_encode_equals_eager(device, pre_gets_gradient):
    torch.manual_seed(0)
    x, W, b, b_pre = leaf(B, D_IN, device=device), leaf(D_IN, D_SAE, device=device), \
        leaf(D_SAE, device=device), leaf(D_IN, device=device)
    h_bias = torch.randn(D_SAE, dtype=torch.float64, device=device)
    g_values = torch.randn(B, K, dtype=torch.float64, device=device)
    g_pre = torch.randn(B, D_SAE, dtype=torch.float64, device=device)
    results = []
    for fn in (sparse.topk_encode, sparse.topk_encode_eager):
        values, indices, pre = fn(x, W, b, b_pre, h_bias, K)
        loss = (values * g_values).sum() + ((pre * g_pre).sum() if pre_gets_gradient else 0)
        results.append((values, indices, pre, torch.autograd.grad(loss, [x, W, b, b_pre])))
    (v1, i1, p1, g1), (v2, i2, p2, g2) = results
    assert torch.equal(i1, i2) and (i1.diff(dim=-1) > 0).all()  # same latents, ascending
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(p1, p2)
    for name, a, e in zip(("x", "W_enc", "b_enc", "b_pre"), g1, g2):
        torch.testing.assert_close(a, e, msg=lambda m, n=name: f"grad {n}: {m}")


def test_topk_encode_dense_reference():
    """The eager twin itself against the textbook dense formula: h = zeros.scatter(topk(relu(pre)))."""
    torch.manual_seed(1)
    x, W, b, b_pre = leaf(B, D_IN), leaf(D_IN, D_SAE), leaf(D_SAE), leaf(D_IN)
    values, indices, _ = sparse.topk_encode(x, W, b, b_pre, torch.zeros(D_SAE, dtype=torch.float64), K)
    dense = torch.zeros(B, D_SAE, dtype=torch.float64).scatter(1, indices, values)
    pre = (x - b_pre) @ W + b
    kth = pre.topk(K, dim=-1).values[:, -1:]
    expected = torch.where(pre >= kth, pre.relu(), 0.0)
    torch.testing.assert_close(dense, expected)
    g = torch.randn(B, D_SAE, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad((dense * g).sum(), [W, b_pre]),
                               torch.autograd.grad((expected * g).sum(), [W, b_pre]))


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_decode_equals_eager_and_dense(device):
    torch.manual_seed(2)
    W_dec = leaf(D_SAE, D_IN, device=device)
    indices = torch.stack([torch.randperm(D_SAE, device=device)[:K] for _ in range(B)])  # unsorted rows
    values = leaf(B, K, device=device)
    g_out = torch.randn(B, D_IN, dtype=torch.float64, device=device)
    dense_h = torch.zeros(B, D_SAE, dtype=torch.float64, device=device).scatter(1, indices, values)
    outs = [sparse.sparse_decode(values, indices, W_dec), sparse.sparse_decode_eager(values, indices, W_dec),
            dense_h @ W_dec]
    grads = [torch.autograd.grad(out, [values, W_dec], g_out) for out in outs]
    for out, grad in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(outs[0], out)
        torch.testing.assert_close(grads[0][0], grad[0])
        torch.testing.assert_close(grads[0][1], grad[1])


@pytest.mark.parametrize("device", DEVICES)
def test_gather_encode_equals_eager(device):
    """The aux-k loss's read of chosen pre-activations: the sparse backward against autograd through gather."""
    torch.manual_seed(5)
    x, W, b, b_pre = leaf(B, D_IN, device=device), leaf(D_IN, D_SAE, device=device), \
        leaf(D_SAE, device=device), leaf(D_IN, device=device)
    h_bias = torch.randn(D_SAE, dtype=torch.float64, device=device)
    indices = torch.stack([torch.randperm(D_SAE, device=device)[:10] for _ in range(B)])  # unsorted rows
    g = torch.randn(B, 10, dtype=torch.float64, device=device)
    pre = (x - b_pre) @ W + (b + h_bias)
    sparse_values = sparse.gather_encode(x, W, b, b_pre, h_bias, pre, indices)
    torch.testing.assert_close(sparse_values, pre.gather(-1, indices))
    grads = [torch.autograd.grad((v * g).sum(), [x, W, b, b_pre]) for v in (sparse_values, pre.gather(-1, indices))]
    for name, a, e in zip(("x", "W_enc", "b_enc", "b_pre"), *grads):
        torch.testing.assert_close(a, e, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("dead_every, k_aux", [(0, 8), (3, 8), (16, 8), (3, 40)],
                         ids=["no dead latents", "top k_aux of the dead, sparse", "every dead latent, sparse",
                              "every dead latent, a third of all: dense"])
def test_model_fast_path_equals_eager_path(dead_every, k_aux):
    """A whole loss.backward() through the sparse kernels and through the SAE's eager formula, float32 as in
    training; with dead latents, more than k_aux of them or fewer."""
    torch.manual_seed(3)
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, normalization="dataset_scale", k_aux=k_aux)
    sae = SparseAutoencoder(cfg)
    sae.normalization.set_scale(0.5)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_pre.normal_(0, 0.1)
    x = torch.randn(256, D_IN)
    dead = torch.arange(D_SAE) % dead_every == 0 if dead_every else None
    grads = []
    for kernels in (SPARSE, EAGER):
        out = sae_loss(sae, x, dead_mask=dead, kernels=kernels)
        grads.append([out.loss.detach(), *torch.autograd.grad(out.loss, list(sae.parameters()))])
    for name, a, e in zip(("loss", "W_enc", "b_enc", "W_dec", "b_pre"), *grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_half_precision_falls_back_to_the_eager_path():
    torch.manual_seed(4)
    sae32 = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, normalization="none"))
    sae16 = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, normalization="none"), dtype=torch.bfloat16)
    assert kernels_for(sae16, autocast=False) is EAGER and kernels_for(sae32, autocast=True) is EAGER
    assert kernels_for(sae32, autocast=False) is SPARSE
    sae16.load_state_dict({n: t.to(torch.bfloat16) for n, t in sae32.state_dict().items()})
    x = torch.randn(64, D_IN)
    out = sae_loss(sae16, x.to(torch.bfloat16), dead_mask=torch.ones(D_SAE, dtype=torch.bool),
                   kernels=kernels_for(sae16, autocast=False))
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in sae16.parameters())
    ref = sae32(x)  # bf16 rounding may swap near-tied latents, so compare on fp32's selection
    torch.testing.assert_close(sae16.decode_normalized(ref.values.to(torch.bfloat16), ref.indices).float(),
                               ref.x_hat_n, rtol=0.02, atol=0.05)
    assert (sae16(x.to(torch.bfloat16)).indices == ref.indices).all(-1).float().mean() > 0.8


def test_aux_k_sends_no_gradient_to_the_dense_pre_activations():
    """With dead latents the sparse path's backward stays sparse: nothing flows into `pre` (B, d_sae)."""
    torch.manual_seed(6)
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, normalization="none", k_aux=8))
    out = SPARSE.forward(sae, torch.randn(64, D_IN))
    reached = []
    out.pre.register_hook(lambda grad: reached.append(grad))
    aux = aux_reconstruction(sae, out, torch.arange(D_SAE) % 3 == 0, 8, SPARSE)  # 8 of 32 dead per row
    (aux.pow(2).sum() + out.x_hat_n.pow(2).sum()).backward()
    assert all(grad is None for grad in reached)  # the hook sees an undefined gradient, never a tensor
    assert sae.W_enc.grad.abs().sum() > 0
