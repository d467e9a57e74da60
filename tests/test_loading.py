"""Checkpoint loaders against transformers: tiny random models in Meta (1 and 2 shards, Llama 3.1 rope
scaling), Hugging Face and GGUF formats give transformers' logits; GGUF dequantisation equals the gguf
package's; bad files give one-line errors naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llama import load_model
from llama.loading.gguf_reader import load_tensors, read_gguf

transformers = pytest.importorskip("transformers")
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor  # noqa: E402

DIM, N_LAYERS, N_HEADS, N_KV, VOCAB, HIDDEN = 64, 2, 4, 2, 256, 192
SCALING = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
HF_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
            "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
            "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj", "feed_forward.w3": "mlp.up_proj",
            "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def random_meta_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.1):
        return torch.randn(*shape, generator=gen) * scale

    head_dim = DIM // N_HEADS
    weights = {"tok_embeddings.weight": randn(VOCAB, DIM, scale=1.0), "norm.weight": 1 + randn(DIM),
               "output.weight": randn(VOCAB, DIM)}
    for i in range(N_LAYERS):
        p = f"layers.{i}."
        weights |= {p + "attention.wq.weight": randn(N_HEADS * head_dim, DIM),
                    p + "attention.wk.weight": randn(N_KV * head_dim, DIM),
                    p + "attention.wv.weight": randn(N_KV * head_dim, DIM),
                    p + "attention.wo.weight": randn(DIM, N_HEADS * head_dim),
                    p + "feed_forward.w1.weight": randn(HIDDEN, DIM), p + "feed_forward.w2.weight": randn(DIM, HIDDEN),
                    p + "feed_forward.w3.weight": randn(HIDDEN, DIM),
                    p + "attention_norm.weight": 1 + randn(DIM), p + "ffn_norm.weight": 1 + randn(DIM)}
    return weights


def hf_model(weights: dict[str, torch.Tensor]):
    """transformers' LlamaForCausalLM holding the same weights (q/k permuted by transformers' own code)."""
    config = transformers.LlamaConfig(
        hidden_size=DIM, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=N_KV,
        vocab_size=VOCAB, intermediate_size=HIDDEN, rms_norm_eps=1e-5, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", **SCALING}, max_position_embeddings=8192, tie_word_embeddings=False)
    permute = LlamaTensorProcessor()._reverse_permute_weights  # llama.cpp/Meta pair layout -> rotate-half
    state = {"model.embed_tokens.weight": weights["tok_embeddings.weight"], "model.norm.weight": weights["norm.weight"],
             "lm_head.weight": weights["output.weight"]}
    for name, tensor in weights.items():
        if name.startswith("layers."):
            _, i, *rest = name.split(".")
            module = HF_NAMES[".".join(rest[:-1])]
            if module == "self_attn.q_proj":
                tensor = torch.from_numpy(permute(tensor.numpy(), N_HEADS, N_HEADS))
            elif module == "self_attn.k_proj":
                tensor = torch.from_numpy(permute(tensor.numpy(), N_HEADS, N_KV))
            state[f"model.layers.{i}.{module}.weight"] = tensor
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def write_meta(folder, weights, n_shards: int) -> None:
    folder.mkdir()
    params = dict(dim=DIM, n_layers=N_LAYERS, n_heads=N_HEADS, n_kv_heads=N_KV, vocab_size=VOCAB, multiple_of=32,
                  ffn_dim_multiplier=None, norm_eps=1e-5, rope_theta=10000.0, use_scaled_rope=True,
                  rope_scaling_factor=SCALING["factor"])
    (folder / "params.json").write_text(json.dumps(params))
    column_parallel = ("wq", "wk", "wv", "w1", "w3", "output")  # split along output rows
    for shard in range(n_shards):
        part = {}
        for name, tensor in weights.items():
            module = name.split(".")[-2]
            if tensor.dim() == 1:
                part[name] = tensor.clone()
            else:
                dim = 0 if module in column_parallel else 1
                part[name] = tensor.chunk(n_shards, dim=dim)[shard].clone()
        torch.save(part, folder / f"consolidated.{shard:02d}.pth")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    weights = random_meta_weights()
    write_meta(root / "meta1", weights, 1)
    write_meta(root / "meta2", weights, 2)
    reference = hf_model(weights)
    reference.save_pretrained(root / "hf")
    return root, reference


def padded_batch():
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (3, 24), generator=gen)
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[1, :9] = False  # left padding
    mask[2, :20] = False
    return tokens, mask


@pytest.mark.parametrize("folder", ["meta1", "meta2", "hf"])
def test_tiny_checkpoint_logits_equal_transformers(tiny, folder):
    root, reference = tiny
    loaded = load_model(root / folder, tokenizer=False)
    assert loaded.args.rope_scaling["factor"] == SCALING["factor"]
    tokens, mask = padded_batch()
    with torch.no_grad():
        ours = loaded.model(tokens, attention_mask=mask).logits
        theirs = reference(input_ids=tokens, attention_mask=mask.long()).logits
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)
    assert loaded.source.startswith(folder)


def test_rope_scaling_matters(tiny):
    """The scaled frequencies must change the logits, or the tests above could not see a scaling bug."""
    root, reference = tiny
    params = json.loads((root / "meta1" / "params.json").read_text())
    params["use_scaled_rope"] = False
    (root / "unscaled").mkdir()
    (root / "unscaled" / "params.json").write_text(json.dumps(params))
    (root / "unscaled" / "consolidated.00.pth").symlink_to(root / "meta1" / "consolidated.00.pth")
    tokens = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        unscaled = load_model(root / "unscaled", tokenizer=False).model(tokens).logits
        theirs = reference(input_ids=tokens).logits
    assert (unscaled - theirs).abs().max() > 1e-3


def write_tiny_gguf(path, weights, qtypes: dict[str, "gguf.GGMLQuantizationType"]) -> None:
    """A tiny Llama GGUF written with the gguf package (its quantizers, llama.cpp's q/k layout = Meta's)."""
    import gguf
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(N_LAYERS)
    writer.add_context_length(8192)
    writer.add_embedding_length(DIM)
    writer.add_feed_forward_length(HIDDEN)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_KV)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    names = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
    gguf_names = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
                  "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down",
                  "feed_forward.w3": "ffn_up", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
    for name, tensor in weights.items():
        if name.startswith("layers."):
            _, i, *rest = name.split(".")
            target = f"blk.{i}.{gguf_names['.'.join(rest[:-1])]}.weight"
        else:
            target = names[name.split(".")[0]] + ".weight"
        qtype = qtypes.get(target.split(".")[-2], gguf.GGMLQuantizationType.F32) if tensor.dim() == 2 \
            else gguf.GGMLQuantizationType.F32
        data = gguf.quants.quantize(tensor.numpy().astype(np.float32), qtype)
        plain = qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)  # typed by numpy
        writer.add_tensor(target, data, raw_dtype=None if plain else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_every_type_dequantises_like_the_gguf_package(tmp_path):
    import gguf
    Q = gguf.GGMLQuantizationType
    qtypes = {"attn_q": Q.Q4_1, "attn_k": Q.Q8_0, "attn_v": Q.Q4_0, "attn_output": Q.Q5_1, "ffn_gate": Q.F16,
              "ffn_up": Q.BF16, "ffn_down": Q.Q5_0, "token_embd": Q.Q8_0}
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, random_meta_weights(), qtypes)
    reader = gguf.GGUFReader(path)
    ours = load_tensors(read_gguf(path), [t.name for t in reader.tensors])
    assert {t.tensor_type for t in reader.tensors} >= set(qtypes.values())
    for tensor in reader.tensors:
        reference = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        np.testing.assert_array_equal(ours[tensor.name].numpy(), reference, err_msg=tensor.name)


def test_gguf_tiny_model_equals_transformers_from_the_same_file(tmp_path):
    """transformers reads the same file with its own GGUF code (it undoes llama.cpp's q/k permutation)."""
    import gguf
    path = tmp_path / "tiny-q8.gguf"
    write_tiny_gguf(path, random_meta_weights(seed=3), {k: gguf.GGMLQuantizationType.Q8_0
                                                        for k in ("attn_q", "attn_k", "attn_v", "attn_output")})
    loaded = load_model(path, tokenizer=False)
    reference = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    tokens, mask = padded_batch()
    with torch.no_grad():
        ours = loaded.model(tokens, attention_mask=mask).logits
        theirs = reference(input_ids=tokens, attention_mask=mask.long()).logits
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)


def test_default_gguf_dequantises_like_the_gguf_package(gguf_path):
    import gguf
    reader = gguf.GGUFReader(gguf_path)
    picked = {}
    for tensor in reader.tensors:  # one tensor of each type the file holds
        picked.setdefault(tensor.tensor_type, tensor)
    assert {t.name for t in picked} == {"Q4_1", "Q8_0", "F32"}
    ours = load_tensors(read_gguf(gguf_path), [t.name for t in picked.values()])
    for tensor in picked.values():
        rows = tensor.data[:2048]  # (rows, bytes per row): the first rows are enough, and quick
        np.testing.assert_array_equal(ours[tensor.name].numpy()[:len(rows)],
                                      gguf.quants.dequantize(rows, tensor.tensor_type))


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, gguf_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gguf_path.read_bytes()[:5_000_000])
    with pytest.raises(ValueError) as err:
        load_model(truncated)
    assert "truncated.gguf" in one_line(err) and "truncated" in one_line(err)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(gguf_path.read_bytes()[:100_000])  # cut inside the token list
    with pytest.raises(ValueError, match="header.gguf.*truncated"):
        load_model(header_only)
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="model.bin: not a GGUF file"):
        load_model(not_gguf)
    with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
        load_model(tmp_path / "nowhere.gguf")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: neither a Meta checkpoint"):
        load_model(empty)


def test_bad_checkpoint_folders(tmp_path, tiny):
    root, _ = tiny
    no_params = tmp_path / "no_params"
    no_params.mkdir()
    (no_params / "consolidated.00.pth").symlink_to(root / "meta1" / "consolidated.00.pth")
    with pytest.raises(FileNotFoundError, match="params.json: missing"):
        load_model(no_params, tokenizer=False)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "params.json").write_text((root / "meta1" / "params.json").read_text())
    (corrupt / "consolidated.00.pth").write_bytes(b"not a zip file")
    with pytest.raises(ValueError) as err:
        load_model(corrupt, tokenizer=False)
    assert "consolidated.00.pth: not a readable PyTorch checkpoint" in one_line(err)
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{oops")
    (bad_json / "model.safetensors").symlink_to(root / "hf" / "model.safetensors")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_model(bad_json, tokenizer=False)
