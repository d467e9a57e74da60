"""Llama 3 in plain PyTorch, with named taps and injection points for interpretability.

    from llama import load_model, generate
    loaded = load_model("model.gguf", dtype="bfloat16")    # a GGUF file, a Meta or a Hugging Face folder
    model, tokenizer = loaded.model, loaded.tokenizer
    out = model(tokens, taps=("blocks.20.hook_resid_post",), return_logits=False)

Reading order: model.py (the network), hooks.py (hook names), kv_cache.py, generation.py, loading/;
then the modules the loader swaps in for speed: cpu_16bit.py (16-bit on CPUs that emulate it), quant.py.
"""

from llama.generation import generate
from llama.hooks import ModelOutput, hook_names, parse_hook_name
from llama.kv_cache import KVCache
from llama.loading import LoadedModel, load_model
from llama.model import ModelArgs, Transformer

__all__ = ["KVCache", "LoadedModel", "ModelArgs", "ModelOutput", "Transformer", "generate", "hook_names",
           "load_model", "parse_hook_name"]
