"""The model on the embedded SmolLM2-135M GGUF against transformers (logits, hidden states, module
outputs, an injected steering vector), plus hook-name rules, early stopping and the KV cache."""

from __future__ import annotations

import pytest
import torch

from llama import ModelArgs, Transformer, hook_names, parse_hook_name

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Hi",
           "I can't believe how good this movie was! 🎬 Ça va? def f(x): return x**2",
           "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"]


def left_padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, ids))
    tokens = torch.tensor([[0] * (length - len(i)) + i for i in ids])
    mask = torch.tensor([[False] * (length - len(i)) + [True] * len(i) for i in ids])
    return tokens, mask


@pytest.fixture(scope="module")
def batch(smol):
    ids = [smol.tokenizer.encode(p, allow_special=True) for p in PROMPTS]
    return ids, *left_padded(ids)


def test_logits_equal_transformers_on_a_padded_batch(smol, hf_smol, batch):
    ids, tokens, mask = batch
    ours = smol.model(tokens, attention_mask=mask).logits
    theirs = hf_smol(input_ids=tokens, attention_mask=mask.long()).logits
    assert (ours[mask] - theirs[mask]).abs().max() < 1e-3
    for row, prompt in enumerate(ids):  # padding changes nothing: each prompt alone, through transformers
        alone = hf_smol(input_ids=torch.tensor([prompt])).logits[0]
        assert (ours[row, mask[row]] - alone).abs().max() < 1e-3


def test_taps_equal_transformers_hidden_states(smol, hf_smol, batch):
    _, tokens, mask = batch
    n = smol.args.n_layers
    taps = ["hook_embed", "blocks.0.hook_resid_post", "blocks.20.hook_resid_post", f"blocks.{n - 2}.hook_resid_post",
            "blocks.7.hook_resid_pre", "ln_final.hook_normalized"]
    ours = smol.model(tokens, attention_mask=mask, taps=taps).taps
    hidden = hf_smol(input_ids=tokens, attention_mask=mask.long(), output_hidden_states=True).hidden_states
    assert len(hidden) == n + 1
    pairs = {"hook_embed": hidden[0], "blocks.0.hook_resid_post": hidden[1], "blocks.20.hook_resid_post": hidden[21],
             f"blocks.{n - 2}.hook_resid_post": hidden[n - 1], "blocks.7.hook_resid_pre": hidden[7],
             # transformers' last hidden state has the final norm applied: it is our ln_final, not resid_post
             "ln_final.hook_normalized": hidden[n]}
    for name, reference in pairs.items():
        torch.testing.assert_close(ours[name][mask], reference[mask], atol=2e-4, rtol=1e-4, msg=name)


def test_block_sites_equal_transformers_module_outputs(smol, hf_smol, batch):
    _, tokens, mask = batch
    layer = 11
    seen = {}
    block = hf_smol.model.layers[layer]

    def record(key):
        return lambda module, inputs, output: seen.update({key: output[0] if isinstance(output, tuple) else output})

    def record_input(module, args, kwargs):
        seen["resid_pre"] = args[0] if args else kwargs["hidden_states"]

    handles = [block.register_forward_pre_hook(record_input, with_kwargs=True),
               block.input_layernorm.register_forward_hook(record("ln1")),
               block.self_attn.register_forward_hook(record("attn")),
               block.post_attention_layernorm.register_forward_hook(record("ln2")),
               block.mlp.register_forward_hook(record("mlp")),
               block.register_forward_hook(record("resid_post"))]
    try:
        hf_smol(input_ids=tokens, attention_mask=mask.long())
    finally:
        for handle in handles:
            handle.remove()
    sites = {"hook_resid_pre": "resid_pre", "ln1.hook_normalized": "ln1", "hook_attn_out": "attn",
             "ln2.hook_normalized": "ln2", "hook_mlp_out": "mlp", "hook_resid_post": "resid_post"}
    taps = [f"blocks.{layer}.{site}" for site in [*sites, "hook_resid_mid"]]
    ours = smol.model(tokens, attention_mask=mask, taps=taps).taps
    for site, key in sites.items():
        torch.testing.assert_close(ours[f"blocks.{layer}.{site}"][mask], seen[key][mask], atol=2e-4, rtol=1e-4,
                                   msg=site)
    mid = seen["resid_pre"] + seen["attn"]
    torch.testing.assert_close(ours[f"blocks.{layer}.hook_resid_mid"][mask], mid[mask], atol=2e-4, rtol=1e-4)


def test_identity_injection_changes_nothing_and_a_vector_matches_transformers(smol, hf_smol, batch):
    _, tokens, mask = batch
    plain = smol.model(tokens, attention_mask=mask).logits
    identity = smol.model(tokens, attention_mask=mask, injections={"blocks.5.hook_resid_post": lambda x: x}).logits
    assert torch.equal(plain, identity)
    vector = torch.randn(smol.args.dim, generator=torch.Generator().manual_seed(0)) * 4
    name = "blocks.5.hook_resid_post"
    out = smol.model(tokens, attention_mask=mask, taps=[name, "blocks.4.hook_resid_post", "blocks.6.hook_resid_pre"],
                     injections={name: lambda x: x + vector})
    assert (out.logits - plain)[mask].abs().max() > 0.1
    # the tap shows the activation before the injection, later hooks see it after
    clean = smol.model(tokens, attention_mask=mask, taps=[name]).taps[name]
    torch.testing.assert_close(out.taps[name], clean)
    torch.testing.assert_close(out.taps["blocks.6.hook_resid_pre"], clean + vector)
    handle = hf_smol.model.layers[5].register_forward_hook(lambda m, i, o: o + vector)
    try:
        theirs = hf_smol(input_ids=tokens, attention_mask=mask.long()).logits
    finally:
        handle.remove()
    assert (out.logits[mask] - theirs[mask]).abs().max() < 1e-3


def test_early_stop_runs_no_later_layer(smol, batch):
    _, tokens, mask = batch
    calls = []
    handles = [layer.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, layer in
               enumerate(smol.model.layers)]
    handles.append(smol.model.output.register_forward_hook(lambda m, i, o: calls.append("output")))
    try:
        out = smol.model(tokens, attention_mask=mask, taps=["blocks.3.ln1.hook_normalized", "blocks.8.hook_mlp_out"],
                         return_logits=False)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == list(range(9)) and out.logits is None
    full = smol.model(tokens, attention_mask=mask, taps=["blocks.8.hook_mlp_out"]).taps["blocks.8.hook_mlp_out"]
    torch.testing.assert_close(out.taps["blocks.8.hook_mlp_out"], full)


def test_hook_names_and_errors():
    names = hook_names(2)
    assert names[0] == "hook_embed" and names[-1] == "ln_final.hook_normalized" and len(names) == 2 + 2 * 7
    assert parse_hook_name("blocks.1.ln1.hook_normalized", 2) == (1, "ln1.hook_normalized")
    for bad in ("blocks.2.hook_resid_post", "blocks.0.hook_resid", "layers.0", "blocks.x.hook_resid_pre"):
        with pytest.raises(ValueError) as err:
            parse_hook_name(bad, 2)
        assert "\n" not in str(err.value) and bad in str(err.value)
    model = Transformer(ModelArgs.debug())
    with pytest.raises(ValueError, match="blocks.5.hook_resid_post"):
        model(torch.zeros(1, 3, dtype=torch.long), taps=["blocks.5.hook_resid_post"])
    with pytest.raises(ValueError, match="needs at least one tap"):
        model(torch.zeros(1, 3, dtype=torch.long), return_logits=False)
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        model(torch.zeros(1, 3, dtype=torch.long), injections={"hook_embed": lambda x: x[:, :1]})


def test_model_args_validation_and_hidden_size_rule():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="rope_scaling lacks"):
        ModelArgs(rope_scaling={"factor": 8.0})
    assert ModelArgs().ffn_hidden_dim == 14336  # Llama 3 8B: dim 4096, multiplier 1.3, multiple of 1024
    assert ModelArgs(dim=2048, multiple_of=256, ffn_dim_multiplier=1.5).ffn_hidden_dim == 8192  # Llama 3.2 1B
    assert ModelArgs(hidden_dim=1536).ffn_hidden_dim == 1536


def test_kv_cache_chunks_equal_one_full_forward():
    torch.manual_seed(0)
    model = Transformer(ModelArgs.debug()).eval()
    tokens = torch.randint(0, 256, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[0, :6] = False
    mask[2, :1] = False
    with torch.no_grad():
        full = model(tokens, attention_mask=mask).logits
        cache = model.new_cache(3, 32)
        parts = [model(tokens[:, :12], attention_mask=mask[:, :12], cache=cache).logits]
        parts += [model(tokens[:, 12:17], cache=cache).logits]
        parts += [model(tokens[:, t:t + 1], cache=cache).logits for t in range(17, 20)]
    torch.testing.assert_close(torch.cat(parts, 1)[mask], full[mask], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="KV cache full"):
        model(tokens, cache=cache)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_and_cache_equal_cpu():
    torch.manual_seed(0)
    cpu = Transformer(ModelArgs.debug()).eval()
    gpu = Transformer(ModelArgs.debug()).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    tokens = torch.randint(0, 256, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :4] = False
    with torch.no_grad():
        expected = cpu(tokens, attention_mask=mask).logits
        cache = gpu.new_cache(2, 10)
        first = gpu(tokens[:, :7].cuda(), attention_mask=mask[:, :7].cuda(), cache=cache).logits
        rest = gpu(tokens[:, 7:].cuda(), cache=cache).logits
    torch.testing.assert_close(torch.cat([first, rest], 1).cpu()[mask], expected[mask], atol=1e-4, rtol=1e-4)
