"""The SAE model, its loss and its file format, checked against independent numpy formulas.

The reference design's bugs are pinned here: decoder renormalisation and gradient projection per latent
(per ROW of W_dec), an aux reconstruction without b_pre, and b_pre initialised in normalised space.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sae import SAEConfig, SparseAutoencoder
from sae.activations import jumprelu_thresholds
from sae.io import load_sae, save_sae
from sae.loss import aux_reconstruction, sae_loss
from sae.sparse import EAGER, SPARSE
from settings import SettingError

D_IN, D_SAE, K = 12, 40, 4


def make_sae(seed: int = 0, norm_scale: float = 1.0, **overrides) -> SparseAutoencoder:
    torch.manual_seed(seed)
    cfg = SAEConfig(**{"d_in": D_IN, "d_sae": D_SAE, "k": K, "normalization": "none", **overrides})
    sae = SparseAutoencoder(cfg, dtype=torch.float64)
    if cfg.normalization == "dataset_scale":
        sae.normalization.set_scale(norm_scale)
    with torch.no_grad():  # move off the symmetric init so every bias matters
        sae.b_enc.normal_(0, 0.3)
        sae.b_pre.normal_(0, 0.5)
    return sae


def dense(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    return sae.to_dense(sae.encode(x))


def np_normalize(x: np.ndarray, sae: SparseAutoencoder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent normalisation: (x_n, shift, scale) with x = x_n * scale + shift."""
    kind = sae.cfg.normalization
    zeros, ones = np.zeros_like(x[:, :1]), np.ones_like(x[:, :1])
    if kind == "dataset_scale":
        scale = float(sae.normalization.scale)
        return x * scale, zeros, ones / scale
    if kind == "token_standardize":
        mean, std = x.mean(1, keepdims=True), x.std(1, ddof=1, keepdims=True) + sae.cfg.norm_eps
        return (x - mean) / std, mean, std
    if kind == "mean_centred_unit_norm":
        mu = sae.normalization.mean.numpy()
        norm = np.linalg.norm(x - mu, axis=1, keepdims=True)
        return (x - mu) / norm, np.broadcast_to(mu, x.shape), norm
    return x, zeros, ones


def np_forward(x: np.ndarray, sae: SparseAutoencoder) -> tuple[np.ndarray, np.ndarray]:
    """Independent TopK SAE forward -> (dense latents, x_hat raw)."""
    p = {n: t.detach().numpy() for n, t in sae.state_dict().items()}
    x_n, shift, scale = np_normalize(x, sae)
    pre = (x_n - p["b_pre"]) @ p["W_enc"] + p["b_enc"] + p["h_bias"]
    h = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :sae.cfg.k]
    np.put_along_axis(h, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    return h, (h @ p["W_dec"] + p["b_pre"]) * scale + shift


# ---- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, field", [({"d_in": -1}, "d_in"), ({"k": 50}, "k"), ({"activation": "gelu"}, "activation"),
                                        ({"normalization": "batch"}, "normalization"),
                                        ({"k_aux": 41}, "k_aux"), ({"aux_coeff": float("nan")}, "aux_coeff")])
def test_config_rejects_bad_values_naming_the_field(bad, field):
    with pytest.raises(SettingError) as err:  # the field and its value (cli.build names the flag)
        SAEConfig(**{"d_in": D_IN, "d_sae": D_SAE, **bad})
    assert err.value.field == field


def test_config_dict_round_trip_and_defaults():
    cfg = SAEConfig(d_in=8, d_sae=64, hook_name="blocks.3.hook_resid_post", model="m", chat=True)
    assert cfg.k_aux == 32 and SAEConfig(d_in=8, d_sae=100_000).k_aux == 2048
    assert SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        SAEConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="d_in and d_sae"):
        SAEConfig.from_dict({"d_sae": 64})  # a template is no SAE's config
    template = SAEConfig(k=8)
    assert not template.is_complete and template.k_aux == 0
    done = template.complete(d_in=8, expansion=4, hook_name="blocks.1.hook_resid_post")
    assert (done.d_in, done.d_sae, done.k, done.k_aux, done.hook_name) == (8, 32, 8, 16, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="d_in and d_sae"):
        SparseAutoencoder(template)


def test_fitted_normalisation_is_state_not_config():
    sae = make_sae(normalization="dataset_scale", norm_scale=0.37)
    assert "norm_scale" not in sae.cfg.to_dict()
    assert float(sae.state_dict()["normalization.scale"]) == 0.37
    with pytest.raises(ValueError, match="positive finite"):
        sae.normalization.set_scale(-1.0)
    fresh = make_sae(normalization="dataset_scale")
    fresh.load_state_dict(sae.state_dict())  # the state dict alone carries the fitted scale
    x = torch.randn(5, D_IN, dtype=torch.float64)
    assert torch.equal(fresh(x).x_hat, sae(x).x_hat)


# ---- initialisation and forward -------------------------------------------------------------------

def test_init_uniform_encoder_tied_unit_decoder_rows():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=4096), dtype=torch.float64)
    W_enc, W_dec = sae.W_enc.detach(), sae.W_dec.detach()
    torch.testing.assert_close(W_dec.norm(dim=1), torch.ones(4096, dtype=torch.float64))
    torch.testing.assert_close(W_enc, W_dec.t() * W_enc.norm(dim=0))  # tied: each column along its decoder row
    assert W_enc.abs().max() <= 32 ** -0.5                      # nn.Linear's bound, 1/sqrt(d_in)
    assert W_enc.var().item() == pytest.approx(1 / (3 * 32), rel=0.03)  # uniform: variance bound^2 / 3
    assert sae.b_pre.abs().max() == 0 and sae.b_enc.abs().max() == 0 and sae.h_bias.abs().max() == 0


@pytest.mark.parametrize("normalization", ["none", "dataset_scale", "token_standardize", "mean_centred_unit_norm"])
@pytest.mark.parametrize("kernels", [SPARSE, EAGER])
def test_forward_matches_numpy(normalization, kernels):
    sae = make_sae(normalization=normalization, norm_scale=0.37)
    if normalization == "mean_centred_unit_norm":
        sae.set_normalization_stats(mean=torch.randn(D_IN, dtype=torch.float64))
    with torch.no_grad():
        sae.h_bias.normal_(0, 0.2)
    x = torch.randn(64, D_IN, dtype=torch.float64) * 3 + 1
    h, x_hat = np_forward(x.numpy(), sae)
    out = kernels.forward(sae, x)
    np.testing.assert_allclose(out.x_hat.detach().numpy(), x_hat, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dense(sae, x).detach().numpy(), h, rtol=1e-10, atol=1e-10)
    assert out.values.shape == (64, K) and out.pre.shape == (64, D_SAE)
    np.testing.assert_allclose(sae.normalization.inverse(out.x_n, sae.normalize(x)[1]).numpy(), x.numpy(), atol=1e-10)
    # encode and decode both work in raw space: decode(encode(x)) is forward's reconstruction
    latents = sae.encode(x)
    np.testing.assert_allclose(sae.decode(*latents, x=x).detach().numpy(), x_hat, rtol=1e-10, atol=1e-10)


def test_h_bias_steers_a_latent_into_the_top_k():
    sae = make_sae()
    x = torch.randn(32, D_IN, dtype=torch.float64)
    latent = int(dense(sae, x).count_nonzero(0).argmin())  # the least used latent
    with torch.no_grad():
        sae.h_bias[latent] = 100.0
    h = dense(sae, x)
    assert (h[:, latent] > 90).all() and ((h > 0).sum(1) <= K).all()


def test_decoder_direction_is_the_raw_space_effect_of_one_unit():
    sae = make_sae(normalization="dataset_scale", norm_scale=0.25)
    v, i = torch.zeros(1, K, dtype=torch.float64), torch.arange(K)[None]
    base = sae.decode(v, i)  # a linear normalisation: no raw input needed to map back
    v[0, 2] = 1.0
    moved = sae.decode(v, i)
    torch.testing.assert_close((moved - base)[0], sae.decoder_direction(2))
    with pytest.raises(ValueError, match="out of range"):
        sae.decoder_direction(D_SAE)


# ---- decoder upkeep: per latent, i.e. per ROW of W_dec (d_sae, d_in) ----------------------------------

def test_renormalisation_is_per_row_and_keeps_directions():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1, dtype=torch.float64) * 3 + 0.1)
    before = sae.W_dec.detach().numpy().copy()
    sae.set_decoder_norm_to_unit_norm()
    expected = before / np.linalg.norm(before, axis=1, keepdims=True)  # per row, not per column
    np.testing.assert_allclose(sae.W_dec.detach().numpy(), expected, rtol=1e-12)


def test_projected_gradient_is_orthogonal_to_each_row():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1, dtype=torch.float64) + 0.5)  # not unit: the formula must divide
    grad = torch.randn(D_SAE, D_IN, dtype=torch.float64)
    sae.W_dec.grad = grad.clone()
    sae.project_decoder_grads()
    w, g = sae.W_dec.detach().numpy(), grad.numpy()
    expected = g - (g * w).sum(1, keepdims=True) / (w * w).sum(1, keepdims=True) * w
    np.testing.assert_allclose(sae.W_dec.grad.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert np.abs((sae.W_dec.grad.numpy() * w).sum(1)).max() < 1e-12


def test_rows_unit_norm_and_gradients_projected_after_every_step():
    sae = make_sae()
    sae.set_decoder_norm_to_unit_norm()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(5):
        x = torch.randn(64, D_IN, dtype=torch.float64)
        sae_loss(sae, x).loss.backward()
        sae.project_decoder_grads()
        assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-12, step
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE, dtype=torch.float64))


# ---- b_pre in normalised space ----------------------------------------------------------------------

def test_b_pre_initialised_from_the_normalised_mean():
    sae = make_sae(normalization="token_standardize")
    x = torch.randn(500, D_IN, dtype=torch.float64) * torch.linspace(0.5, 4, D_IN, dtype=torch.float64) + 5
    sae.init_from_data(sae.normalized_mean([x[:200], x[200:]]))
    x_n, _, _ = np_normalize(x.numpy(), sae)
    np.testing.assert_allclose(sae.b_pre.detach().numpy(), x_n.mean(0), rtol=1e-10, atol=1e-12)
    assert np.abs(sae.b_pre.detach().numpy() - x.numpy().mean(0)).min() > 1.0  # not the raw mean


def test_dataset_scale_fits_mean_squared_norm_to_d_in():
    sae = make_sae(normalization="dataset_scale")
    x = torch.randn(1000, D_IN, dtype=torch.float64) * 7
    sae.set_normalization_stats(mean_sq_norm=float(x.pow(2).sum(1).mean()))
    assert abs(float(sae.normalize(x)[0].pow(2).sum(1).mean()) - D_IN) < 1e-9


# ---- loss ------------------------------------------------------------------------------------------

def test_loss_figures_match_numpy():
    sae = make_sae()
    x = torch.randn(64, D_IN, dtype=torch.float64)
    out = sae_loss(sae, x)
    h, x_hat = np_forward(x.numpy(), sae)
    err = x_hat - x.numpy()
    assert out.mse.item() == pytest.approx((err ** 2).mean(), rel=1e-10)
    fvu = (err ** 2).sum() / ((x.numpy() - x.numpy().mean(0)) ** 2).sum()
    assert out.fvu.item() == pytest.approx(fvu, rel=1e-10)
    assert out.l0.item() == pytest.approx((h > 0).sum(1).mean())
    np.testing.assert_array_equal(out.fired.numpy(), (h > 0).any(0))
    assert out.aux_mse.item() == 0 and out.loss.item() == pytest.approx(out.mse.item())


def test_aux_reconstruction_has_no_b_pre_and_a_detached_target():
    sae = make_sae()
    x = torch.randn(6, D_IN, dtype=torch.float64)
    dead = ~sae_loss(sae, x).fired  # latents silent in this batch: the main path leaves them alone
    k_aux = 6
    assert dead.sum() > k_aux
    # 1. the aux reconstruction alone: sum of the top-k_aux dead rows, no bias, no path to b_pre
    out = sae(x)
    pre = out.pre.detach()
    aux = aux_reconstruction(sae, out._replace(pre=pre), dead, k_aux)
    assert torch.autograd.grad(aux.sum(), sae.b_pre, allow_unused=True)[0] is None
    p, w = pre.numpy(), sae.W_dec.detach().numpy()
    masked = np.where(dead.numpy(), p, -np.inf)
    top = np.argsort(-masked, axis=1)[:, :k_aux]
    h = np.zeros_like(p)
    np.put_along_axis(h, top, np.maximum(np.take_along_axis(p, top, 1), 0), 1)
    np.testing.assert_allclose(aux.detach().numpy(), h @ w, rtol=1e-10, atol=1e-12)
    # 2. in the loss: aux_mse against the residual, and the main path's gradients untouched by it
    sae.cfg.k_aux, sae.cfg.aux_coeff = k_aux, 0.5
    with_aux = sae_loss(sae, x, dead_mask=dead)
    _, x_hat = np_forward(x.numpy(), sae)
    assert with_aux.aux_mse.item() == pytest.approx(((h @ w - (x.numpy() - x_hat)) ** 2).mean(), rel=1e-9)
    grads_aux = torch.autograd.grad(with_aux.loss, [sae.W_dec, sae.W_enc])
    grads_main = torch.autograd.grad(sae_loss(sae, x).loss, [sae.W_dec, sae.W_enc])
    live = ~dead
    torch.testing.assert_close(grads_aux[0][live], grads_main[0][live])      # decoder rows of live latents
    torch.testing.assert_close(grads_aux[1][:, live], grads_main[1][:, live])  # encoder columns of live latents
    assert grads_aux[0][dead].abs().sum() > 0 and grads_main[0][dead].abs().sum() == 0


def test_aux_gate_waits_for_k_aux_dead_latents_only_when_asked():
    sae = make_sae()
    x = torch.randn(32, D_IN, dtype=torch.float64)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:3] = True
    sae.cfg.k_aux = 8
    assert sae_loss(sae, x, dead_mask=dead).aux_mse > 0
    assert sae_loss(sae, x, dead_mask=dead, aux_gate_requires_k_aux_dead=True).aux_mse == 0


def test_relu_l1_penalty():
    sae = make_sae(activation="relu", l1_coeff=0.01)
    x = torch.randn(32, D_IN, dtype=torch.float64)
    out = sae_loss(sae, x)
    p = {n: t.detach().numpy() for n, t in sae.state_dict().items()}
    h = np.maximum((x.numpy() - p["b_pre"]) @ p["W_enc"] + p["b_enc"], 0)
    mse = ((h @ p["W_dec"] + p["b_pre"] - x.numpy()) ** 2).mean()
    l1 = (h * np.linalg.norm(p["W_dec"], axis=1)).sum(1).mean()
    assert out.loss.item() == pytest.approx(mse + 0.01 * l1, rel=1e-10)
    assert out.l0.item() == pytest.approx((h > 0).sum(1).mean())


# ---- other activations ------------------------------------------------------------------------------

def test_batchtopk_keeps_k_per_row_on_average():
    sae = make_sae(activation="batchtopk")
    x = torch.randn(50, D_IN, dtype=torch.float64)
    h = dense(sae, x).detach().numpy()
    pre = sae(x).pre.detach().numpy()
    cutoff = np.sort(np.maximum(pre, 0).ravel())[-K * 50]
    np.testing.assert_array_equal(h > 0, (pre >= cutoff) & (pre > 0))
    assert (h > 0).sum() == K * 50


def test_topk_decnorm_ranks_by_activation_times_decoder_norm():
    sae = make_sae(activation="topk_decnorm")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1, dtype=torch.float64) * 4)
    x = torch.randn(20, D_IN, dtype=torch.float64)
    pre = sae(x).pre.detach().numpy()
    score = np.maximum(pre, 0) * np.linalg.norm(sae.W_dec.detach().numpy(), axis=1)
    top = np.argsort(-score, axis=1)[:, :K]
    expected = np.zeros_like(pre)
    np.put_along_axis(expected, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    np.testing.assert_allclose(dense(sae, x).detach().numpy(), expected, rtol=1e-12)


def test_jumprelu_thresholds_from_a_topk_sae_keep_k_on_average():
    sae = make_sae()
    x = torch.randn(400, D_IN, dtype=torch.float64)
    pre = sae(x).pre.detach()
    thresholds = jumprelu_thresholds([pre[:200], pre[200:]], K, sae.W_dec.detach().norm(dim=1))
    jr = make_sae(activation="jumprelu")
    jr.load_state_dict({**sae.state_dict(), "threshold": thresholds})
    l0 = (dense(jr, x) > 0).sum(1).double().mean().item()
    assert abs(l0 - K) < 0.25, l0
    torch.testing.assert_close(dense(jr, x), torch.where(pre > thresholds, pre, 0.0))


# ---- save / load -----------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    sae = make_sae(activation="jumprelu", normalization="mean_centred_unit_norm", hook_name="blocks.1.hook_resid_post")
    with torch.no_grad():
        sae.threshold.uniform_(0, 0.1)
        sae.normalization.mean.normal_()
    save_sae(sae, tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["complete.json", "config.json", "sae", "sae.safetensors"]
    loaded = load_sae(tmp_path / "sae", dtype=torch.float64)
    assert loaded.cfg == sae.cfg
    for (name, a), (name_b, b) in zip(sae.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b and torch.equal(a, b), name
    x = torch.randn(8, D_IN, dtype=torch.float64)
    torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat)


def test_load_errors_are_one_line_naming_the_file(tmp_path):
    def one_line(err):
        assert "\n" not in str(err.value)
        return str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        load_sae(tmp_path / "nowhere")
    assert "nowhere" in one_line(err)
    folder = save_sae(make_sae(), tmp_path / "sae")
    (folder / "sae.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError) as err:
        load_sae(folder)
    assert "sae.safetensors" in one_line(err)
    (folder / "sae.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_sae(folder)
    assert "sae.safetensors" in one_line(err)
    (folder / "config.json").write_text("{broken")
    with pytest.raises(ValueError) as err:
        load_sae(folder)
    assert "config.json" in one_line(err)
    save_sae(make_sae(), folder)
    (folder / "config.json").write_text(json.dumps({**make_sae().cfg.to_dict(), "d_sae": 41}))
    with pytest.raises(ValueError) as err:
        load_sae(folder)
    assert "config.json" in one_line(err) and "record" in one_line(err)
    (folder / "complete.json").unlink()  # a folder from before records: the tensors' shapes still checked
    with pytest.raises(ValueError) as err:
        load_sae(folder)
    assert "do not match" in one_line(err)


NORMALISATION_CASES = ("dataset_scale", "mean_centred_unit_norm", "token_standardize", "jumprelu")
FORMAT_CASES = [("sae_v1", c) for c in NORMALISATION_CASES] + [("sae_v2", c) for c in (*NORMALISATION_CASES, "wide")]


@pytest.mark.parametrize("fixture,case", FORMAT_CASES, ids=lambda v: v)
def test_saved_folders_load_with_bit_identical_outputs(fixture, case):
    """Folders written by earlier code, with the outputs that code computed. tests/fixtures/sae_v1 (format 1)
    predates the normalisation becoming a module (norm_scale in config.json, norm_mean a top-level tensor);
    tests/fixtures/sae_v2 (format 2) predates the SAE's formula and its kernels being separated (the encoder
    then chose the sparse kernels itself); its `wide` case (64 x 1024, k 16) gives the TopK many latents."""
    from safetensors.torch import load_file

    folder = Path(__file__).parent / "fixtures" / fixture / case
    expected = load_file(str(folder / "expected.safetensors"))
    sae = load_sae(folder)
    out = sae(expected["x"])
    assert torch.equal(out.x_hat, expected["x_hat"])
    assert torch.equal(out.values, expected["values"]) and torch.equal(out.indices, expected["indices"])
    assert torch.equal(sae.to_dense(sae.encode(expected["x"])), expected["dense"])


def test_eager_and_fast_paths_return_the_same_order():
    sae = make_sae()
    x = torch.randn(16, D_IN, dtype=torch.float64)
    fast, eager = SPARSE.forward(sae, x), sae(x)
    assert torch.equal(fast.indices, eager.indices) and (fast.indices.diff(dim=-1) > 0).all()
    torch.testing.assert_close(fast.values, eager.values)
