"""Llama 3 in plain PyTorch, with named taps and injection points for interpretability.

    from llama import load_model, generate
    model, tokenizer, args, source = load_model()          # the embedded SmolLM2-135M-Instruct
    out = model(tokens, taps=("blocks.20.hook_resid_post",), return_logits=False)

Reading order: model.py (the network), hooks.py (hook names), kv_cache.py, generation.py, loading/.
"""

from llama.generation import generate
from llama.hooks import ModelOutput, hook_names, parse_hook_name
from llama.kv_cache import KVCache
from llama.loading import LoadedModel, load_model
from llama.model import ModelArgs, Transformer

__all__ = ["KVCache", "LoadedModel", "ModelArgs", "ModelOutput", "Transformer", "generate", "hook_names",
           "load_model", "parse_hook_name"]
