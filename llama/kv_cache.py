"""The key/value cache for generation: preallocated once, filled in place one chunk at a time.

Slots are shared by the whole batch: prompts are LEFT-padded to one length, so slot t of every row
holds that row's t-th token (or padding). `mask` remembers which slots hold real tokens and
`n_real` how many each row has, which gives the rotary position of the next token.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for `bsz` sequences of at most `max_seqlen` slots."""

    def __init__(self, *, n_layers: int, bsz: int, max_seqlen: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 rotations: torch.Tensor | None = None):
        if bsz < 1 or max_seqlen < 1:
            raise ValueError(f"KVCache needs bsz >= 1 and max_seqlen >= 1, got {bsz} and {max_seqlen}")
        shape = (n_layers, bsz, n_kv_heads, max_seqlen, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.mask = torch.zeros(bsz, max_seqlen, dtype=torch.bool, device=device)  # True: real token
        self.n_real = torch.zeros(bsz, dtype=torch.long, device=device)  # real tokens per row so far
        self.length = 0  # slots filled (the same for every row)
        self.padded = False  # whether any filled slot is padding (then attention needs a mask)
        # (max_seqlen, 1, head_dim // 2) complex rotations of every position, computed once for all steps
        self.rotations = rotations

    @property
    def bsz(self) -> int:
        return self.k.shape[1]

    @property
    def max_seqlen(self) -> int:
        return self.k.shape[3]

    def reserve(self, token_mask: torch.Tensor | None, seqlen: int) -> tuple[int, int, torch.Tensor]:
        """Claim the next `seqlen` slots. Returns (start, end, positions (bsz or 1, seqlen))."""
        start, end = self.length, self.length + seqlen
        if end > self.max_seqlen:
            raise ValueError(f"KV cache full: {end} tokens do not fit in max_seqlen={self.max_seqlen}; "
                             f"create the cache with a larger max_seqlen")
        if token_mask is None:
            self.mask[:, start:end] = True
            if self.padded:
                positions = self.n_real[:, None] + torch.arange(seqlen, device=self.mask.device)
            else:  # no padding so far: a token's position is its slot
                positions = torch.arange(start, end, device=self.mask.device)[None]
            self.n_real += seqlen
        else:
            self.mask[:, start:end] = token_mask
            self.padded = self.padded or not bool(token_mask.all())
            positions = (self.n_real[:, None] + token_mask.cumsum(-1) - 1).clamp(min=0)
            self.n_real += token_mask.sum(-1)
        self.length = end
        return start, end, positions

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this chunk's k, v (bsz, n_kv_heads, seqlen, head_dim) for `layer`; return all keys
        and values so far, (bsz, n_kv_heads, start + seqlen, head_dim) views of the cache."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
