"""Session-wide fixtures: the embedded default model, loaded once, ours and transformers' side by side.

    gguf_path  the SmolLM2-135M-Instruct GGUF file (paths.default_model_path())
    smol       llama.load_model(gguf_path): LoadedModel(model, tokenizer, args, source), fp32, eval,
               requires_grad off (read-only: never change its weights)
    hf_smol    transformers' LlamaForCausalLM from the same GGUF, fp32, eval, requires_grad off
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root: paths, cli, llama...


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    import paths
    return paths.default_model_path()


@pytest.fixture(scope="session")
def smol(gguf_path):
    from llama import load_model
    loaded = load_model(gguf_path, device="cpu", dtype=torch.float32)
    loaded.model.requires_grad_(False)
    return loaded


@pytest.fixture(scope="session")
def hf_smol(gguf_path):
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                          dtype=torch.float32)
    return model.eval().requires_grad_(False)
