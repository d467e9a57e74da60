"""Text generation: greedy or temperature / top-p sampling, batched, streamed, with optional injections.

Prompts of different lengths are LEFT-padded so that every row's next token lands in the same
column; the KV cache then holds one slot per column, and positions count real tokens only.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from llama.hooks import Injection
from llama.model import Transformer

OnToken = Callable[[int, torch.Tensor], None]


def sample(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next tokens (bsz,) from logits (bsz, vocab): argmax when temperature is 0, otherwise a draw from
    softmax(logits / temperature) restricted to the smallest set of tokens whose mass reaches top_p."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens ranked before it already reach top_p (the top token always stays)
        sorted_probs[sorted_probs.cumsum(-1) - sorted_probs > top_p] = 0.0
        choice = torch.multinomial(sorted_probs, 1, generator=generator)  # (bsz, 1) rank
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check(prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float, top_p: float) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: give at least one prompt, and no empty prompt (add BOS if needed)")
    if max_new_tokens < 0 or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"generate: need max_new_tokens >= 0, temperature >= 0 and 0 < top_p <= 1, got "
                         f"{max_new_tokens}, {temperature}, {top_p}")


def generate(model: Transformer, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
             injections: Mapping[str, Injection] | None = None, on_token: OnToken | None = None,
             use_cache: bool = True) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by up to `max_new_tokens` tokens.

    A row stops after a token in `tokenizer.stop_ids` (EOS, end of turn), which is not returned.
    injections: hook name -> fn(act) -> act, applied at every forward step (e.g. steering).
    on_token(step, tokens): called after each step with the (bsz,) new tokens; -1 marks rows that
        produced nothing (they had stopped, or just drew a stop token).
    use_cache=False recomputes the whole sequence each step (slower; the same tokens).
    Returns the new tokens of each prompt.
    """
    _check(prompts, max_new_tokens, temperature, top_p)
    device = model.norm.weight.device
    bsz, prompt_len = len(prompts), max(len(p) for p in prompts)
    total = prompt_len + max_new_tokens
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    tokens = torch.full((bsz, total), pad, dtype=torch.long, device=device)
    mask = torch.zeros(bsz, total, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):  # left padding
        tokens[row, prompt_len - len(prompt):prompt_len] = torch.tensor(list(prompt), device=device)
        mask[row, prompt_len - len(prompt):prompt_len] = True
    stop_ids = torch.tensor(sorted(tokenizer.stop_ids), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cache = model.new_cache(bsz, total) if use_cache else None
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    new_tokens: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():  # no autograd bookkeeping (version counters) at all
        for step, cur in enumerate(range(prompt_len, total)):
            if cache is None:
                chunk, chunk_mask = tokens[:, :cur], mask[:, :cur]
            else:  # the prompt once, then one token per step
                chunk, chunk_mask = (tokens[:, :cur], mask[:, :cur]) if step == 0 else (tokens[:, cur - 1:cur], None)
            logits = model(chunk, attention_mask=chunk_mask, cache=cache, injections=injections,
                           last_logits_only=True).logits[:, -1]  # (bsz, vocab)
            next_tokens = sample(logits, temperature, top_p, generator)
            tokens[:, cur], mask[:, cur] = next_tokens, True
            done |= torch.isin(next_tokens, stop_ids)
            emitted = next_tokens.masked_fill(done, -1)
            for row, token in enumerate(emitted.tolist()):
                if token >= 0:
                    new_tokens[row].append(token)
            if on_token is not None:
                on_token(step, emitted)
            if bool(done.all()):
                break
    return new_tokens
