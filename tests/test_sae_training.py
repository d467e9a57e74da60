"""Training behaviour on synthetic data with a known answer: planted features are recovered, and the
aux-k loss revives latents that a bad initialisation left dead."""

from __future__ import annotations

import pytest
import torch

from sae import SAEConfig, SparseAutoencoder
from sae.loss import sae_loss

D_IN, N_ATOMS, K = 32, 64, 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one thread avoids the wake-up cost of a thread pool on every op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows = sparse positive combinations of K atoms of a random unit dictionary (N_ATOMS, D_IN)."""
    atoms = torch.randn(N_ATOMS, D_IN, generator=generator)
    atoms /= atoms.norm(dim=1, keepdim=True)
    which = torch.rand(n, N_ATOMS, generator=generator).argsort(dim=1)[:, :K]        # (n, K) distinct atoms
    magnitude = torch.rand(n, K, generator=generator) * 2 + 0.5                      # positive, in [0.5, 2.5)
    codes = torch.zeros(n, N_ATOMS).scatter(1, which, magnitude)
    return codes @ atoms, atoms


def train(sae: SparseAutoencoder, data: torch.Tensor, *, steps: int, lr: float, aux: bool,
          dead_after: int = 25, batch: int = 128, seed: int = 0) -> torch.Tensor:
    """Adam with decoder upkeep; returns how many steps each latent has been silent at the end."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    silent = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for _ in range(steps):
        x = data[torch.randint(0, len(data), (batch,), generator=gen)]
        out = sae_loss(sae, x, dead_mask=(silent >= dead_after) if aux else None)
        out.loss.backward()
        sae.project_decoder_grads()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        silent = torch.where(out.fired, 0, silent + 1)
    return silent


def test_planted_features_are_recovered():
    gen = torch.Generator().manual_seed(0)
    data, atoms = planted_data(8192, gen)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=2 * N_ATOMS, k=K, normalization="none", k_aux=32))
    sae.init_from_data(sae.normalized_mean([data]))
    train(sae, data, steps=400, lr=5e-3, aux=True)
    best = (atoms @ sae.W_dec.detach().t()).max(dim=1).values  # best cosine per atom (rows are unit)
    assert (best > 0.9).float().mean() >= 0.9, best.sort().values[:10]
    assert sae_loss(sae, data[:2048]).fvu < 0.15


def test_aux_loss_revives_latents_a_bad_init_left_dead():
    gen = torch.Generator().manual_seed(1)
    data, _ = planted_data(8192, gen)
    dead = torch.arange(N_ATOMS) >= N_ATOMS // 2
    fired_at_end = {}
    for aux in (False, True):
        torch.manual_seed(1)
        sae = SparseAutoencoder(SAEConfig(d_in=D_IN, d_sae=N_ATOMS, k=K, normalization="none", k_aux=16))
        with torch.no_grad():  # half the encoder columns shrunk and pointed against the data's mean
            mean_dir = data.mean(0) / data.mean(0).norm()
            sae.W_enc[:, dead] = 0.05 * (sae.W_enc[:, dead] - 2 * mean_dir[:, None])
        assert not sae_loss(sae, data[:2048]).fired[dead].any()  # dead from the start
        train(sae, data, steps=200, lr=3e-3, aux=aux)
        fired_at_end[aux] = sae_loss(sae, data[:2048]).fired[dead].float().mean().item()
    assert fired_at_end[False] == 0.0          # without aux-k nothing ever reaches them
    assert fired_at_end[True] >= 0.75, fired_at_end
