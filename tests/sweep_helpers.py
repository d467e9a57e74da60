"""A tiny model with a planted steering direction, for the sweep's tests (tests/test_latents_sweep.py)
and the server's (tests/test_serve.py): pushing latent LATENT makes the model write " awful", the
judge's 'negative' word."""

from __future__ import annotations

import numpy as np
import torch

from latents.judge import train_judge
from llama.loading import LoadedModel
from llama.model import ModelArgs, Transformer
from sae import SAEConfig, SparseAutoencoder

HOOK = "blocks.1.hook_resid_post"
DIM, VOCAB, BAD, GOOD, LATENT = 16, 40, 5, 6, 3
WORDS = {BAD: "awful", GOOD: "lovely"}


class WordTokenizer:
    """Token i is the word " w<i>" (BAD and GOOD: " awful", " lovely"); text is encoded word by word (any
    other word as some token from 7 up)."""

    pad_id, bos_id = 0, 1
    stop_ids = frozenset()  # never stop early: every completion has max_new_tokens tokens

    def token_bytes(self, token_id: int) -> bytes:
        return f" {WORDS.get(token_id, f'w{token_id}')}".encode()

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode()

    def encode(self, text: str) -> list[int]:
        known = {f"w{i}": i for i in range(VOCAB)} | {word: i for i, word in WORDS.items()}
        return [known.get(w, 7 + sum(w.encode()) % (VOCAB - 7)) for w in text.split()]


def planted():
    """(LoadedModel, SAE with LATENT on the planted direction, judge of " awful" vs " lovely", 5 prompts of
    4 token ids)."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=DIM, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB,
                                  multiple_of=16, max_seq_len=64)).eval().requires_grad_(False)
    direction = torch.nn.functional.normalize(torch.randn(DIM), dim=0)
    with torch.no_grad():  # the output head reads the direction (after the final norm) as " awful" alone
        u = torch.nn.functional.normalize(direction * model.norm.weight, dim=0)
        model.output.weight -= (model.output.weight @ u)[:, None] * u
        model.output.weight[BAD] = 0.3 * u
    sae = SparseAutoencoder(SAEConfig(d_in=DIM, d_sae=8, k=2, normalization="none", hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc[:, LATENT] = direction
        sae.W_dec[LATENT] = direction
        sae.b_enc[LATENT] = 0.0
    sae.requires_grad_(False)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice([f"w{i}" for i in range(7, 40)], 5)) + (" awful" if i % 2 else " lovely")
             for i in range(300)]
    judge = train_judge(texts, ["negative" if i % 2 else "positive" for i in range(300)], min_count=2)
    loaded = LoadedModel(model, WordTokenizer(), model.args, "tiny")
    prompts = [rng.integers(7, VOCAB, size=4).tolist() for _ in range(5)]
    return loaded, sae, judge, prompts
