"""Session-wide fixtures: the embedded default model, loaded once, ours and transformers' side by side.

    gguf_path  the SmolLM2-135M-Instruct GGUF file (paths.default_model_path())
    smol       llama.load_model(gguf_path): LoadedModel(model, tokenizer, args, source), fp32, eval,
               requires_grad off (read-only: never change its weights)
    hf_smol    transformers' LlamaForCausalLM from the same GGUF, fp32, eval, requires_grad off
    sae        a random SAE (d_sae 512, k 8) at the default hook of `smol`, normalisation fitted to it
    sae_dir    that SAE saved in our format
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root: paths, cli, llama...

import paths  # noqa: E402
from llama import load_model  # noqa: E402
from sae.config import SAEConfig  # noqa: E402
from sae.io import save_sae  # noqa: E402
from sae.model import SparseAutoencoder  # noqa: E402


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return paths.default_model_path()


@pytest.fixture(scope="session")
def smol(gguf_path):
    loaded = load_model(gguf_path, device="cpu", dtype=torch.float32)
    loaded.model.requires_grad_(False)
    return loaded


@pytest.fixture(scope="session")
def hf_smol(gguf_path):
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                          dtype=torch.float32)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def sae(smol):
    """A randomly initialised SAE at the default hook, its normalisation fitted to real activations."""
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=smol.args.dim, d_sae=512, k=8, hook_name=paths.DEFAULT_HOOK, model=smol.source)
    sae = SparseAutoencoder(cfg)
    tokens = torch.tensor([smol.tokenizer.encode("Today I went to the park and")])
    acts = smol.model(tokens, taps=(cfg.hook_name,), return_logits=False).taps[cfg.hook_name].reshape(-1, cfg.d_in)
    sae.set_normalization_stats(mean_sq_norm=float(acts.pow(2).sum(-1).mean()))
    sae.init_from_data(sae.normalized_mean([acts]))
    return sae.requires_grad_(False)


@pytest.fixture(scope="session")
def sae_dir(sae, tmp_path_factory):
    return save_sae(sae, tmp_path_factory.mktemp("sae") / "sae")
