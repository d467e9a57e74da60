"""SAE interoperability: SAELens (checked by SAELens itself), sparsify, Llama Scope and OpenAI layouts
(checked against brute-force numpy forwards written from each tool's documented formula), hook-name
maps, and one-line errors for malformed files, in process and through the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import convert
import paths
from llama.loading import open_checkpoint
from sae import SAEConfig, SparseAutoencoder
from sae.formats import from_sae, hook_names, llamascope, openai, saelens, sparsify, to_sae
from sae.io import load_config

ROOT = Path(__file__).resolve().parents[1]
D_IN, D_SAE, K = 16, 64, 5


def _close(actual, expected, atol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=1e-5)


def _our_sae(activation="topk", normalization="dataset_scale", seed=0, **kw) -> SparseAutoencoder:
    torch.manual_seed(seed)
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, activation=activation, normalization=normalization,
                    hook_name="blocks.3.hook_resid_post", model="test-model", **kw)
    sae = SparseAutoencoder(cfg)
    if normalization == "dataset_scale":
        sae.normalization.set_scale(0.37)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_pre.normal_(0, 1.0)
        if activation == "jumprelu":
            sae.threshold.uniform_(0.0, 0.5)
    return sae.eval()


def _inputs(seed=1, rows=12, scale=3.0) -> torch.Tensor:
    return torch.randn(rows, D_IN, generator=torch.Generator().manual_seed(seed)) * scale


def _within_layer_norm_gap(out, theirs_x_hat) -> bool:
    """Tools that undo LayerNorm with std (not std + eps as we do) differ from us by eps * x_hat_n
    exactly; float32 rounding of values as large as x_hat adds about 1e-6 relative."""
    gap = (out.x_hat.double() - torch.as_tensor(theirs_x_hat).double()).abs()
    return bool(torch.all(gap <= 1e-5 * out.x_hat_n.abs() + 1e-6 * out.x_hat.abs() + 2e-6))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def sae_lens():
    warnings.filterwarnings("ignore", module="sae_lens")
    import sae_lens
    return sae_lens


# ---- SAELens: ours -> SAELens, loaded by SAELens itself -------------------------------------------

@pytest.mark.parametrize("activation,normalization,steer", [
    ("topk", "dataset_scale", False), ("topk", "none", True), ("relu", "none", False),
    ("jumprelu", "dataset_scale", False)])
def test_ours_exported_to_saelens_matches_in_saelens(tmp_path, sae_lens, activation, normalization, steer):
    ours = _our_sae(activation, normalization)
    if steer:  # a steering bias is folded into b_enc, so SAELens reproduces the steered SAE
        ours.h_bias[7] = 5.0
    saelens.write(from_sae(ours), tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    x = _inputs()
    with torch.no_grad():
        _close(theirs.encode(x), ours.to_dense(ours.encode(x)))
        _close(theirs(x), ours(x).x_hat)
        _close(theirs.decode(ours.to_dense(ours.encode(x))), ours(x).x_hat)  # decoding our latents: same space
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert type(theirs).__name__ == {"topk": "TopKSAE", "relu": "StandardSAE", "jumprelu": "JumpReLUSAE"}[activation]


def test_token_standardize_exports_as_saelens_layer_norm(tmp_path, sae_lens):
    ours = _our_sae("topk", "token_standardize", norm_eps=1e-5)
    saelens.write(from_sae(ours), tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    x = _inputs()
    with torch.no_grad():
        out = ours(x)
        _close(theirs.encode(x), ours.to_dense(ours.encode(x)))
        assert _within_layer_norm_gap(out, theirs(x))


# ---- SAELens: saved by SAELens, loaded here -------------------------------------------------------

def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5)
            elif name == "W_dec":  # rows of different norms, as SAELens' own SAEs have
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 + torch.rand(p.shape[0], 1, generator=gen)))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("arch", ["topk_rescaled", "jumprelu_no_bdec", "standard_layer_norm"])
def test_saelens_saved_sae_loads_with_equal_outputs(tmp_path, sae_lens, arch):
    if arch == "topk_rescaled":
        theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K,
                                                          rescale_acts_by_decoder_norm=True))
    elif arch == "jumprelu_no_bdec":
        theirs = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE,
                                                                  apply_b_dec_to_input=False))
    else:
        theirs = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE,
                                                                  normalize_activations="layer_norm"))
    _randomise(theirs, seed=3)
    theirs.cfg.metadata.hook_name = "blocks.2.hook_resid_pre"
    theirs.save_model(tmp_path)
    conv = saelens.read(tmp_path)
    ours = to_sae(conv)
    x = _inputs(seed=4)
    with torch.no_grad():
        _close(ours.to_dense(ours.encode(x)), theirs.encode(x))
        if arch == "standard_layer_norm":  # our LayerNorm inverse multiplies by std + 1e-5
            assert _within_layer_norm_gap(ours(x), theirs(x))
        else:
            _close(ours(x).x_hat, theirs(x))
    assert conv.cfg.hook_name == "blocks.2.hook_resid_pre"


# ---- sparsify ----------------------------------------------------------------------------------

def _sparsify_numpy(folder: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sparsify's documented forward, brute force: dense latents and reconstruction."""
    cfg = json.loads((folder / "cfg.json").read_text())
    from safetensors.numpy import load_file
    t = {k: v.astype(np.float64) for k, v in load_file(folder / "sae.safetensors").items()}
    pre = np.maximum((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"], 0)
    dense = np.zeros_like(pre)
    for row in range(len(x)):
        top = np.argsort(-pre[row])[: cfg["k"]]
        dense[row, top] = pre[row, top]
    return dense, dense @ t["W_dec"] + t["b_dec"]


def _write_sparsify_fixture(folder: Path, seed=5, d_sae=D_SAE, **cfg_overrides) -> None:
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    cfg = {"activation": "topk", "expansion_factor": d_sae // D_IN, "normalize_decoder": True,
           "num_latents": d_sae, "k": K, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": D_IN, **cfg_overrides}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    W_dec = torch.randn(d_sae, D_IN, generator=gen)
    save_file({"encoder.weight": torch.randn(d_sae, D_IN, generator=gen) * 0.3,
               "encoder.bias": torch.randn(d_sae, generator=gen) * 0.1,
               "W_dec": W_dec / W_dec.norm(dim=1, keepdim=True),
               "b_dec": torch.randn(D_IN, generator=gen)}, str(folder / "sae.safetensors"))


def test_sparsify_fixture_loads_with_its_documented_forward(tmp_path):
    _write_sparsify_fixture(tmp_path / "run" / "layers.6")
    conv = sparsify.read(tmp_path / "run")  # a run folder with one hookpoint folder
    assert conv.cfg.hook_name == "blocks.6.hook_resid_post"
    ours, x = to_sae(conv), _inputs(seed=6)
    dense, recon = _sparsify_numpy(tmp_path / "run" / "layers.6", x.double().numpy())
    with torch.no_grad():
        _close(ours.to_dense(ours.encode(x)), dense)
        _close(ours(x).x_hat, recon)


def test_ours_exported_to_sparsify_matches_its_documented_forward(tmp_path):
    ours = _our_sae("topk", "dataset_scale", seed=7)
    folder, _ = sparsify.write(from_sae(ours), tmp_path / "export")
    assert folder == tmp_path / "export" / "layers.3"
    x = _inputs(seed=8)
    dense, recon = _sparsify_numpy(folder, x.double().numpy())
    with torch.no_grad():
        _close(dense, ours.to_dense(ours.encode(x)))
        _close(recon, ours(x).x_hat)
    back = sparsify.read(folder)  # the folded scale comes back as dataset_scale with unit rows
    assert back.cfg.normalization == "dataset_scale" and math.isclose(float(back.state["normalization.scale"]), 0.37,
                                                                           rel_tol=1e-5)
    _close(back.state["W_dec"], ours.W_dec.detach())


# ---- Llama Scope -------------------------------------------------------------------------------

def _write_llamascope(folder: Path, act_fn: str, seed=9, **overrides) -> dict:
    gen = torch.Generator().manual_seed(seed)
    hp = {"d_model": D_IN, "d_sae": D_SAE, "hook_point_in": "blocks.4.hook_resid_post",
          "hook_point_out": "blocks.4.hook_resid_post", "act_fn": act_fn, "top_k": K,
          "jump_relu_threshold": 0.4, "norm_activation": "dataset-wise",
          "dataset_average_activation_norm": {"in": 7.5, "out": 7.5}, "use_decoder_bias": True,
          "apply_decoder_bias_to_pre_encoder": act_fn == "topk", "sparsity_include_decoder_norm": True,
          **overrides}
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    decoder = torch.randn(D_IN, D_SAE, generator=gen)
    decoder = decoder / decoder.norm(dim=0) * (0.3 + torch.rand(D_SAE, generator=gen))  # columns of varied norm
    save_file({"encoder.weight": (torch.randn(D_SAE, D_IN, generator=gen) * 0.3).to(torch.bfloat16),
               "encoder.bias": torch.randn(D_SAE, generator=gen) * 0.1, "decoder.weight": decoder,
               "decoder.bias": torch.randn(D_IN, generator=gen) * 0.5},
              str(folder / "checkpoints" / "final.safetensors"))
    return hp


def _llamascope_numpy(folder: Path, hp: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Language-Model-SAEs' documented forward, dataset-wise, brute force."""
    from safetensors.torch import load_file
    t = {k: v.double().numpy() for k, v in load_file(folder / "checkpoints" / "final.safetensors").items()}
    s_in = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["in"]
    s_out = math.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["out"]
    x_n = x * s_in
    if hp["apply_decoder_bias_to_pre_encoder"]:
        x_n = x_n - t["decoder.bias"]
    pre = x_n @ t["encoder.weight"].T + t["encoder.bias"]
    score = pre * np.linalg.norm(t["decoder.weight"], axis=0) if hp["sparsity_include_decoder_norm"] else pre
    if hp["act_fn"] == "jumprelu":
        mask = score > hp["jump_relu_threshold"] * s_in  # threshold rescaled by sqrt(d) / avg_norm
    elif hp["act_fn"] == "relu":
        mask = score > 0
    else:
        mask = np.zeros_like(score, dtype=bool)
        for row in range(len(x)):
            mask[row, np.argsort(-np.maximum(score[row], 0))[: hp["top_k"]]] = True
    acts = pre * mask
    return acts, (acts @ t["decoder.weight"].T + t["decoder.bias"]) / s_out


@pytest.mark.parametrize("act_fn", ["jumprelu", "topk", "relu"])
def test_llamascope_fixture_matches_its_documented_forward(tmp_path, act_fn):
    hp = _write_llamascope(tmp_path, act_fn)
    conv = llamascope.read(tmp_path)
    assert conv.cfg.normalization == "dataset_scale" and conv.cfg.hook_name == "blocks.4.hook_resid_post"
    ours, x = to_sae(conv), _inputs(seed=10)
    acts, recon = _llamascope_numpy(tmp_path, hp, x.double().numpy())
    assert 0 < (acts != 0).sum(1).mean() < D_SAE  # the threshold is active: some fire, not all
    with torch.no_grad():
        _close(ours.to_dense(ours.encode(x)), acts)
        _close(ours(x).x_hat, recon)


def test_llamascope_refuses_transcoders_and_unknown_activations(tmp_path):
    _write_llamascope(tmp_path / "tc", "jumprelu", hook_point_out="blocks.4.hook_mlp_out")
    with pytest.raises(ValueError) as err:
        llamascope.read(tmp_path / "tc")
    assert "transcoder" in _one_line(err)
    _write_llamascope(tmp_path / "bt", "batchtopk")
    with pytest.raises(ValueError, match="act_fn 'batchtopk' has no counterpart"):
        llamascope.read(tmp_path / "bt")


# ---- OpenAI ------------------------------------------------------------------------------------

def _openai_state(seed=11, activation="TopK") -> dict:
    gen = torch.Generator().manual_seed(seed)
    state = {"pre_bias": torch.randn(D_IN, generator=gen) * 0.2,
             "encoder.weight": torch.randn(D_SAE, D_IN, generator=gen) * 0.3,
             "latent_bias": torch.randn(D_SAE, generator=gen) * 0.1,
             "decoder.weight": torch.randn(D_IN, D_SAE, generator=gen) * 0.3,
             "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long),
             "activation": activation}
    if activation == "TopK":
        state["activation_state_dict"] = {"k": K, "postact_fn": "ReLU"}
    return state


def _openai_numpy(state: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openai/sparse_autoencoder's documented forward, brute force (LayerNorm eps 1e-5, unbiased std)."""
    t = {k: v.double().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}
    topk = state["activation"] == "TopK"
    mu, std = x.mean(-1, keepdims=True), x.std(-1, ddof=1, keepdims=True)
    x_in = (x - mu) / (std + 1e-5) if topk else x
    pre = (x_in - t["pre_bias"]) @ t["encoder.weight"].T + t["latent_bias"]
    latents = np.zeros_like(pre)
    for row in range(len(x)):
        keep = np.argsort(-pre[row])[:K] if topk else np.arange(pre.shape[1])
        latents[row, keep] = np.maximum(pre[row, keep], 0)
    recon = latents @ t["decoder.weight"].T + t["pre_bias"]
    return latents, recon * std + mu if topk else recon


@pytest.mark.parametrize("kind", ["pt_topk", "safetensors_topk", "pt_relu"])
def test_openai_state_dict_matches_its_documented_forward(tmp_path, kind):
    state = _openai_state(activation="ReLU" if kind == "pt_relu" else "TopK")
    path = tmp_path / "resid_post_mlp" / "v5_32k" / "autoencoders" / "5.pt"
    path.parent.mkdir(parents=True)
    if kind.startswith("pt"):
        torch.save(state, path)
    else:
        path = path.with_suffix(".safetensors")
        save_file({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, str(path),
                  metadata={"activation": "TopK", "k": str(K), "postact_fn": "ReLU"})
    conv = openai.read(path)
    assert conv.cfg.hook_name == "blocks.5.hook_resid_post"  # from the release path
    ours, x = to_sae(conv), _inputs(seed=12)
    latents, recon = _openai_numpy(state, x.double().numpy())
    with torch.no_grad():
        out = ours(x)
        _close(ours.to_dense(ours.encode(x)), latents)
        assert _within_layer_norm_gap(out, recon)


def test_openai_pickle_with_objects_is_refused(tmp_path):
    state = _openai_state()
    state["note"] = Fraction(1, 3)  # any object outside tensors, numbers, strings and dicts
    torch.save(state, tmp_path / "3.pt")
    with pytest.raises(ValueError) as err:
        openai.read(tmp_path / "3.pt", hook_name="blocks.3.hook_resid_post")
    assert "not unpickled" in _one_line(err)


# ---- malformed files ---------------------------------------------------------------------------

def _saelens_folder(tmp_path: Path) -> Path:
    folder, _ = saelens.write(from_sae(_our_sae()), tmp_path / "sl")
    return folder


def _rewrite_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file
    tensors = load_file(folder / "sae_weights.safetensors")
    edit(tensors)
    save_file(tensors, str(folder / "sae_weights.safetensors"))


@pytest.mark.parametrize("damage,expected", [
    ("missing_tensor", "missing tensor 'b_enc'"),
    ("wrong_shape", "tensor 'W_enc' has shape (16, 65), expected (16, 64)"),
    ("wrong_dtype", "tensor 'W_dec' has dtype int32"),
    ("truncated", "not a readable safetensors file"),
    ("missing_field", "missing field 'd_sae'"),
    ("bad_json", "not valid JSON"),
])
def test_malformed_saelens_folder_gives_one_line_error(tmp_path, damage, expected):
    folder = _saelens_folder(tmp_path)
    weights = folder / "sae_weights.safetensors"
    if damage == "missing_tensor":
        _rewrite_weights(folder, lambda t: t.pop("b_enc"))
    elif damage == "wrong_shape":
        _rewrite_weights(folder, lambda t: t.update(W_enc=torch.zeros(D_IN, D_SAE + 1)))
    elif damage == "wrong_dtype":
        _rewrite_weights(folder, lambda t: t.update(W_dec=torch.zeros(D_SAE, D_IN, dtype=torch.int32)))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "missing_field":
        cfg = json.loads((folder / "cfg.json").read_text())
        del cfg["d_sae"]
        (folder / "cfg.json").write_text(json.dumps(cfg))
    else:
        (folder / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError) as err:
        saelens.read(folder)
    assert expected in _one_line(err)


def test_malformed_other_formats_give_one_line_errors(tmp_path):
    _write_sparsify_fixture(tmp_path / "layers.1", k=None)  # null k: as if the field were absent
    with pytest.raises(ValueError) as err:
        sparsify.read(tmp_path / "layers.1")
    assert "missing field 'k'" in _one_line(err)
    _write_sparsify_fixture(tmp_path / "layers.2", transcode=True)
    with pytest.raises(ValueError, match="transcode SAEs have no counterpart"):
        sparsify.read(tmp_path / "layers.2")
    path = tmp_path / "7.pt"
    torch.save(_openai_state(), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError) as err:
        openai.read(path, hook_name="blocks.7.hook_resid_post")
    assert "not a readable torch state dict" in _one_line(err)


def test_unmappable_exports_are_refused():
    with pytest.raises(ValueError, match="jumprelu_thresholds"):
        saelens.to_saelens(from_sae(_our_sae("batchtopk", "none")))
    with pytest.raises(ValueError, match="per token"):
        sparsify.to_sparsify(from_sae(_our_sae("topk", "token_standardize")))
    with pytest.raises(ValueError, match="TopK"):
        sparsify.to_sparsify(from_sae(_our_sae("relu", "none")))


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    folder = _saelens_folder(tmp_path)
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    run = subprocess.run([sys.executable, "convert.py", "--from", "saelens", "--to", "ours",
                          "--model", "none", str(folder), str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sae_weights.safetensors" in lines[0]


def _default_model_or_skip():
    try:
        return paths.default_model_path()
    except FileNotFoundError as err:
        pytest.skip(f"default model not installed: {err}")


@pytest.mark.slow
def test_sae_written_for_a_model_records_the_identity_it_loads_with(tmp_path, smol, gguf_path):
    theirs = {"architecture": "topk", "d_in": 576, "d_sae": 64, "k": 4, "apply_b_dec_to_input": True,
              "normalize_activations": "none", "metadata": {"model_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
              "hook_name": "blocks.20.hook_resid_post", "sae_lens_version": "6.54.12"}}
    src = tmp_path / "sl"
    src.mkdir()
    (src / "cfg.json").write_text(json.dumps(theirs))
    gen = torch.Generator().manual_seed(15)
    save_file({"W_enc": torch.randn(576, 64, generator=gen), "b_enc": torch.zeros(64),
               "W_dec": torch.randn(64, 576, generator=gen), "b_dec": torch.zeros(576)},
              str(src / "sae_weights.safetensors"))
    assert convert.main(["--from", "saelens", "--to", "ours", "--model", str(gguf_path), str(src),
                         str(tmp_path / "ours")]) == 0
    info = open_checkpoint(gguf_path)
    assert (info.args.dim, info.args.n_layers) == (576, 30)  # SmolLM2-135M: dim 576, 30 layers
    assert info.source == smol.source
    assert load_config(tmp_path / "ours").model == smol.source  # what llama.load_model reports


def test_cli_refuses_an_sae_of_the_wrong_width_for_the_model(tmp_path):
    _default_model_or_skip()
    folder = _saelens_folder(tmp_path)  # d_in 16; the default model is 576 wide
    with pytest.raises(ValueError) as err:
        convert.main(["--from", "saelens", "--to", "ours", str(folder), str(tmp_path / "out")])
    assert "width 16" in _one_line(err) and "576" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_pre_6_saelens_flat_config_is_read(tmp_path):
    ours = _our_sae("topk", "none", seed=13)
    config, tensors, _ = saelens.to_saelens(from_sae(ours))
    legacy = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.1.hook_mlp_out", "model_name": "gpt2",
              "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K}, "normalize_activations": False,
              "apply_b_dec_to_input": True, "dtype": "float32", "sae_lens_version": "3.20.0"}
    (tmp_path / "cfg.json").write_text(json.dumps(legacy))
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp_path / "sae_weights.safetensors"))
    conv = saelens.read(tmp_path)
    assert (conv.cfg.activation, conv.cfg.k, conv.cfg.hook_name, conv.cfg.model) == \
        ("topk", K, "blocks.1.hook_mlp_out", "gpt2")
    x = _inputs(seed=14)
    with torch.no_grad():
        _close(to_sae(conv)(x).x_hat, ours(x).x_hat)


# ---- hook names --------------------------------------------------------------------------------

@pytest.mark.parametrize("ours,hf", [
    ("blocks.20.hook_resid_post", "layers.20"), ("blocks.0.hook_mlp_out", "layers.0.mlp"),
    ("blocks.5.hook_attn_out", "layers.5.self_attn"), ("hook_embed", "embed_tokens"),
    ("blocks.2.ln1.hook_normalized", "layers.2.input_layernorm"), ("ln_final.hook_normalized", "norm")])
def test_sparsify_hookpoints_map_both_ways(ours, hf):
    assert hook_names.to_sparsify(ours) == hf
    assert hook_names.from_sparsify(hf) == ours


def test_hook_names_across_tools():
    assert hook_names.from_sparsify("model.layers.7") == "blocks.7.hook_resid_post"
    assert hook_names.to_sparsify("blocks.8.hook_resid_pre") == "layers.7"  # block 8's input = block 7's output
    assert hook_names.from_openai("resid_post_attn", 3) == "blocks.3.hook_resid_mid"
    assert hook_names.from_openai("resid_delta_mlp", 3) == "blocks.3.hook_mlp_out"
    assert hook_names.to_openai("blocks.9.hook_resid_post") == ("resid_post_mlp", 9)
    assert hook_names.to_openai("blocks.4.mlp.hook_post") == ("mlp_post_act", 4)
    assert hook_names.openai_hook_from_path("x/resid_delta_attn/v5_32k/autoencoders/11.pt") == "blocks.11.hook_attn_out"
    for bad in (lambda: hook_names.to_sparsify("blocks.1.hook_resid_mid"), lambda: hook_names.from_sparsify("lm_head"),
                lambda: hook_names.parse_hook("blocks.1.hook_q"), lambda: hook_names.from_openai("attn_q", 1),
                lambda: hook_names.check_hook_for_model("blocks.30.hook_resid_post", 30)):
        with pytest.raises(ValueError):
            bad()
