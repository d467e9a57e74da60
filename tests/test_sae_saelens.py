"""Our TopK SAE against SAELens' (sae-lens 6.54) loaded with the same weights: an independent reference."""

from __future__ import annotations

import pytest
import torch

from sae import SAEConfig, SparseAutoencoder
from sae.loss import sae_loss
from sae.sparse import EAGER, SPARSE

sae_lens_topk = pytest.importorskip("sae_lens.saes.topk_sae")
from sae_lens.saes.sae import TrainStepInput  # noqa: E402

D_IN, D_SAE, K = 24, 128, 8


@pytest.fixture(scope="module")
def ours() -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, normalization="none"))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2)
        sae.b_pre.normal_(0, 0.5)
        sae.W_enc.add_(0.05 * torch.randn_like(sae.W_enc))
    return sae


def weights(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return {"W_enc": sae.W_enc.detach().clone(), "b_enc": sae.b_enc.detach().clone(),
            "W_dec": sae.W_dec.detach().clone(), "b_dec": sae.b_pre.detach().clone()}


@pytest.mark.parametrize("kernels", [SPARSE, EAGER])
def test_forward_equals_saelens_topk_sae(ours, kernels):
    ref = sae_lens_topk.TopKSAE(sae_lens_topk.TopKSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=K, dtype="float32", device="cpu", apply_b_dec_to_input=True,
        normalize_activations="none", rescale_acts_by_decoder_norm=False))
    ref.load_state_dict(weights(ours))
    x = torch.randn(64, 3, D_IN) * 2
    with torch.no_grad():
        h_ref = ref.encode(x)
        latents = ours.encode(x)
        torch.testing.assert_close(ours.to_dense(latents), h_ref)
        torch.testing.assert_close(ours.decode(*latents), ref.decode(h_ref))  # both in raw space
        torch.testing.assert_close(kernels.forward(ours, x.reshape(-1, D_IN)).x_hat, ref(x).reshape(-1, D_IN))
    assert ((h_ref > 0).sum(-1) <= K).all() and (h_ref > 0).sum() > 0


def test_training_pass_equals_saelens_topk_training_sae(ours):
    """SAELens' training SAE (rescale by decoder norm: a no-op on our unit rows) gives the same
    reconstruction, and its per-row summed MSE is d_in times our element-mean MSE."""
    ref = sae_lens_topk.TopKTrainingSAE(sae_lens_topk.TopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=K, dtype="float32", device="cpu", apply_b_dec_to_input=True,
        normalize_activations="none"))
    ref.load_state_dict(weights(ours))
    x = torch.randn(256, D_IN)
    out = ref.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                   n_training_steps=0, is_logging_step=False))
    mine = sae_loss(ours, x, kernels=SPARSE)
    torch.testing.assert_close(ours(x).x_hat, out.sae_out)
    torch.testing.assert_close(mine.mse * D_IN, out.losses["mse_loss"])
