"""Generation: greedy tokens equal transformers' `generate` on the default model (batched, with and
without the KV cache); sampling, top-p, seeds, streaming and stop tokens on a tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llama import ModelArgs, Transformer, generate
from llama.generation import sample

N_NEW = 32


@pytest.fixture(scope="module")
def prompts(smol):
    tok = smol.tokenizer
    return [tok.encode_chat([{"role": "user", "content": "Write a haiku about the sea."}]),
            tok.encode("The capital of France is"),
            tok.encode("def fibonacci(n):\n")]


@pytest.fixture(scope="module")
def reference(smol, hf_smol, prompts):
    """transformers' greedy continuations, one prompt at a time, stopping on the same stop tokens."""
    stop = sorted(smol.tokenizer.stop_ids)
    outputs = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        out = hf_smol.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N_NEW, do_sample=False,
                               eos_token_id=stop, pad_token_id=smol.tokenizer.pad_id)[0, len(prompt):].tolist()
        outputs.append(out[:-1] if out and out[-1] in stop else out)  # ours does not return the stop token
    return outputs


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_equals_transformers(smol, prompts, reference, use_cache):
    ours = generate(smol.model, smol.tokenizer, prompts, max_new_tokens=N_NEW, use_cache=use_cache)
    assert ours == reference
    assert any(len(r) == N_NEW for r in reference)  # at least one prompt runs the full 32 steps


def test_streamed_tokens_are_the_returned_tokens(smol, prompts, reference):
    seen = []
    generate(smol.model, smol.tokenizer, prompts[:2], max_new_tokens=8, on_token=lambda step, t: seen.append(t))
    streamed = torch.stack(seen, dim=1).tolist()
    assert [[t for t in row if t >= 0] for row in streamed] == [r[:8] for r in reference[:2]]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Transformer(ModelArgs.debug()).eval()
    return model, SimpleNamespace(pad_id=0, stop_ids={255})


def test_seed_makes_sampling_reproducible(tiny):
    model, tok = tiny
    prompts = [[1, 2, 3], [4, 5]]
    a = generate(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=7)
    b = generate(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=7)
    c = generate(model, tok, prompts, max_new_tokens=12, temperature=1.0, seed=8)
    assert a == b and a != c


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = torch.tensor(np.log(probs), dtype=torch.float32)[None].repeat(4000, 1)
    drawn = sample(logits, temperature=1.0, top_p=0.7, generator=torch.Generator().manual_seed(0)).numpy()
    # brute force: tokens by falling probability until their mass reaches 0.7 -> {1 (0.5), 3 (0.3)}
    assert set(drawn.tolist()) == {1, 3}
    assert abs((drawn == 1).mean() - 0.5 / 0.8) < 0.03
    greedy = sample(logits[:1], temperature=0.0)
    assert greedy.item() == 1


def test_stop_token_ends_only_its_row(tiny):
    model, tok = tiny
    prompts = [[1, 2, 3], [9, 8, 7, 6]]
    free = generate(model, SimpleNamespace(pad_id=0, stop_ids=set()), prompts, max_new_tokens=6)
    stop_at = free[0][2]  # make row 0's third token a stop token
    assert stop_at not in free[0][:2]
    stopped = generate(model, SimpleNamespace(pad_id=0, stop_ids={stop_at}), prompts, max_new_tokens=6)
    assert stopped[0] == free[0][:2]
    cut = free[1].index(stop_at) if stop_at in free[1] else len(free[1])
    assert stopped[1] == free[1][:cut]


def test_injection_steers_generation(smol, prompts, reference):
    vector = smol.model.tok_embeddings.weight[smol.tokenizer.encode(" ocean")[0]] * 50
    steered = generate(smol.model, smol.tokenizer, prompts[1:2], max_new_tokens=8,
                       injections={"blocks.10.hook_resid_post": lambda x: x + vector})
    assert steered[0] != reference[1][:8]


def test_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="no empty prompt"):
        generate(model, tok, [[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tok, [[1]], max_new_tokens=2, top_p=0.0)
