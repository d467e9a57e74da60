"""SAE evaluation: CE loss recovered is 1 for an identity SAE and 0 for zero-ablation; the losses
equal a per-sentence recomputation without padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latents.evaluate import evaluate_sae, left_padded_batches
from llama.model import ModelArgs, Transformer
from sae import SAEConfig, SparseAutoencoder

HOOK = "blocks.1.hook_resid_post"
DIM = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    args = ModelArgs(dim=DIM, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=16,
                     max_seq_len=64, rope_theta=10000.0)
    return Transformer(args).eval()


@pytest.fixture(scope="module")
def sentences():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 97, (int(n),), generator=g).tolist() for n in torch.randint(2, 12, (9,), generator=g)]


def identity_sae(zero: bool = False) -> SparseAutoencoder:
    """ReLU SAE with d_sae = 2 d_in: relu(x) - relu(-x) = x exactly (or 0 with a zero decoder)."""
    sae = SparseAutoencoder(SAEConfig(d_in=DIM, d_sae=2 * DIM, k=DIM, activation="relu", normalization="none"))
    eye = torch.eye(DIM)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.zeros(2 * DIM, DIM) if zero else torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_pre.zero_()
    return sae


def reference_losses(model, sentences, hook, replace=None, prefix=()) -> float:
    """Mean next-token CE of the sentence tokens, one unpadded sequence at a time."""
    total, count = 0.0, 0
    p = len(prefix)
    for seq in sentences:
        tokens = torch.tensor([list(prefix) + seq])

        def splice(a):  # replace the sentence positions only
            return torch.cat([a[:, :p], replace(a[:, p:])], dim=1)
        logits = model(tokens, injections={hook: splice} if replace else None).logits[0]
        first = max(p, 1)  # the first sentence token is predicted only when a prefix precedes it
        total += F.cross_entropy(logits[first - 1:-1], tokens[0, first:], reduction="sum").item()
        count += tokens.shape[1] - first
    return total / count


def test_identity_sae_recovers_all_of_the_loss(model, sentences):
    report = evaluate_sae(model, identity_sae(), HOOK, left_padded_batches(sentences, batch_size=4))
    assert report["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert report["delta_lm_loss"] == pytest.approx(0.0, abs=1e-4)
    assert report["fvu"] == pytest.approx(0.0, abs=1e-10)
    assert report["loss_clean"] == pytest.approx(reference_losses(model, sentences, HOOK), rel=1e-5)
    assert report["loss_zero"] == pytest.approx(
        reference_losses(model, sentences, HOOK, torch.zeros_like), rel=1e-5)
    assert abs(report["loss_zero"] - report["loss_clean"]) > 0.05  # a gap, or the ratio means nothing
    assert report["tokens"] == sum(len(s) for s in sentences)
    assert report["predicted_tokens"] == sum(len(s) - 1 for s in sentences)


def test_zero_decoder_recovers_none_of_the_loss(model, sentences):
    report = evaluate_sae(model, identity_sae(zero=True), HOOK, left_padded_batches(sentences, batch_size=4))
    assert report["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert report["fvu"] >= 1.0  # x_hat = 0: sum ||x||^2 / sum ||x - mean||^2 >= 1


def test_reconstruction_metrics_match_numpy_definitions(model, sentences):
    torch.manual_seed(3)
    sae = SparseAutoencoder(SAEConfig(d_in=DIM, d_sae=48, k=4, normalization="none"))
    report = evaluate_sae(model, sae, HOOK, left_padded_batches(sentences, batch_size=3))
    acts = torch.cat([model(torch.tensor([s]), taps=(HOOK,)).taps[HOOK][0] for s in sentences]).double()
    x_hat = sae(acts.float()).x_hat.double()
    fvu = ((acts - x_hat) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert report["fvu"] == pytest.approx(fvu.item(), rel=1e-4)
    assert report["l0"] == pytest.approx(4.0)
    fired = torch.zeros(48, dtype=torch.bool)
    fired[sae(acts.float()).indices.flatten()] = True
    assert report["unfired_fraction_held_out"] == pytest.approx(1 - fired.float().mean().item())
    loss = reference_losses(model, sentences, HOOK, lambda a: sae(a).x_hat)
    assert report["loss_spliced"] == pytest.approx(loss, rel=1e-4)


def test_context_prefix_is_fed_but_not_scored(model, sentences):
    prefix = [5, 17]
    sae = identity_sae(zero=True)
    report = evaluate_sae(model, sae, HOOK, left_padded_batches(sentences, batch_size=4, prefix=prefix))
    assert report["tokens"] == sum(len(s) for s in sentences)
    assert report["predicted_tokens"] == sum(len(s) for s in sentences)
    assert report["loss_clean"] == pytest.approx(reference_losses(model, sentences, HOOK, prefix=prefix), rel=1e-5)
    assert report["loss_zero"] == pytest.approx(
        reference_losses(model, sentences, HOOK, torch.zeros_like, prefix=prefix), rel=1e-5)
