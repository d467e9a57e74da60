"""Llama 3 in plain PyTorch: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Module paths equal Meta's checkpoint keys (`tok_embeddings`, `layers.{i}.attention.wq`, ...), so a
Meta `consolidated.00.pth` loads with strict=True; other formats are renamed in llama/loading/.
Every hook point of llama/hooks.py is a call `hook(name, x)` in the forward code below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llama.hooks import EMBED, FINAL_NORM, Hooks, Injection, ModelOutput, block_hook_names, no_hooks
from llama.kv_cache import KVCache

HookFn = Callable[[str, torch.Tensor], torch.Tensor]
_ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass
class ModelArgs:
    """Hyperparameters, with meta-llama/llama3's field names (defaults: Llama 3 8B)."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: as many as n_heads (no grouping)
    vocab_size: int = 128256
    multiple_of: int = 1024  # the SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = 1.3
    hidden_dim: int | None = None  # explicit SwiGLU hidden size (GGUF and HF store it); overrides the two above
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None  # Llama 3.1 frequency scaling: factor, low/high_freq_factor, original_max_...
    max_seq_len: int = 8192
    tie_word_embeddings: bool = False  # output head shares tok_embeddings' weight (SmolLM2, Llama 3.2 1B/3B)

    def __post_init__(self):
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelArgs.{name} must be positive, got {getattr(self, name)}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"ModelArgs: dim {self.dim} must split into {self.n_heads} heads of even size")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"ModelArgs: n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        if self.hidden_dim is not None and self.hidden_dim < 1:
            raise ValueError(f"ModelArgs.hidden_dim must be positive, got {self.hidden_dim}")
        if self.rope_scaling is not None:
            missing = [k for k in _ROPE_SCALING_KEYS if k not in self.rope_scaling]
            if missing:
                raise ValueError(f"ModelArgs.rope_scaling lacks {', '.join(missing)}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """The SwiGLU hidden size: `hidden_dim` if given, else Meta's rule (2/3 of 4*dim, scaled, rounded up)."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @classmethod
    def debug(cls, **overrides) -> "ModelArgs":
        """A tiny model for tests: 2 layers, dim 64, 4 heads sharing 2 KV heads."""
        values = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32,
                      ffn_dim_multiplier=None, rope_theta=10000.0, max_seq_len=256)
        return cls(**(values | overrides))


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, the mean taken over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Meta's formula, in float32 for half-precision inputs. Written out: torch 2.13's F.rms_norm is
        # several times slower on a CPU for (batch, seq, dim) inputs.
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_frequencies(args: ModelArgs, device: torch.device | str | None = None) -> torch.Tensor:
    """The rotation speed of each pair of head dimensions: theta^(-2i/head_dim), (head_dim // 2,)."""
    freqs = 1.0 / args.rope_theta ** (torch.arange(0, args.head_dim, 2, device=device).float() / args.head_dim)
    return freqs if args.rope_scaling is None else scale_frequencies(freqs, args.rope_scaling)


def scale_frequencies(freqs: torch.Tensor, scaling: Mapping[str, float]) -> torch.Tensor:
    """Llama 3.1 long-context scaling: slow (long-wavelength) frequencies are divided by `factor`,
    fast ones kept, and the band between interpolated smoothly."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / freqs
    smooth = (old_len / wavelen - low) / (high - low)  # 0 at the low-frequency edge, 1 at the high one
    blended = (1 - smooth) * freqs / factor + smooth * freqs
    scaled = torch.where(wavelen > old_len / low, freqs / factor, freqs)
    in_band = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(in_band, blended, scaled)


def rotary_table(freqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Unit complex numbers e^(i * position * freq): (..., seqlen) positions -> (..., seqlen, 1, head_dim // 2)."""
    angles = positions.float()[..., None] * freqs  # (..., seqlen, head_dim // 2)
    return torch.polar(torch.ones_like(angles), angles)[..., None, :]


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x0, x1), (x2, x3), ... of each head as complex numbers (Meta's layout).
    x: (bsz, seqlen, n_heads, head_dim); freqs_cis: (bsz or 1, seqlen, 1, head_dim // 2)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (bsz, seqlen, n_heads, head_dim // 2)
    return torch.view_as_real(pairs * freqs_cis).flatten(3).type_as(x)


class AttentionContext(NamedTuple):
    """What every layer's attention needs, computed once per forward."""

    freqs_cis: torch.Tensor  # (bsz or 1, seqlen, 1, head_dim // 2) rotations of this chunk's tokens
    mask: torch.Tensor | None  # (bsz, 1, seqlen, n_keys) bool, True = may attend; None: see is_causal
    is_causal: bool  # no mask tensor needed: plain causal attention (or one query seeing every key)
    cache: KVCache | None
    start: int  # the cache slot of this chunk's first token


class Attention(nn.Module):
    """Grouped-query attention: n_heads query heads share n_kv_heads key/value heads."""

    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary_emb(q, ctx.freqs_cis), apply_rotary_emb(k, ctx.freqs_cis)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (bsz, heads, seqlen, head_dim)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer_id, ctx.start, k, v)  # (bsz, n_kv_heads, n_keys, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, is_causal=ctx.is_causal,
                                             enable_gqa=self.n_heads != self.n_kv_heads)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then + feed_forward(norm(x))."""

    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.attention = Attention(args, layer_id)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.names = block_hook_names(layer_id)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, hook: HookFn = no_hooks) -> torch.Tensor:
        n = self.names
        x = hook(n["hook_resid_pre"], x)  # (bsz, seqlen, dim) throughout
        attn = hook(n["hook_attn_out"], self.attention(hook(n["ln1.hook_normalized"], self.attention_norm(x)), ctx))
        x = hook(n["hook_resid_mid"], x + attn)
        mlp = hook(n["hook_mlp_out"], self.feed_forward(hook(n["ln2.hook_normalized"], self.ffn_norm(x))))
        return hook(n["hook_resid_post"], x + mlp)


class Transformer(nn.Module):
    """The Llama 3 decoder. See `forward` for taps, injections, padding and the KV cache."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        weight = torch.empty(args.vocab_size, args.dim)
        if not weight.is_meta:  # on the meta device, normal_ would import torch._dynamo: seconds of start-up
            nn.init.normal_(weight)
        self.tok_embeddings = nn.Embedding.from_pretrained(weight, freeze=False)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.tie_weights()
        # Not a buffer (as in Meta's code): model.to(bfloat16) must not round the rotation speeds. Computed on
        # the CPU even while the model is built on the meta device (maths there would import torch._dynamo),
        # and copied to the tokens' device where used.
        self.freqs = rope_frequencies(args, device="cpu")  # (head_dim // 2,) float32

    def tie_weights(self) -> None:
        """Share the output head with the embeddings when the checkpoint says so (call after loading)."""
        if self.args.tie_word_embeddings and isinstance(self.output, nn.Linear):  # a QuantLinear has its own copy
            self.output.weight = self.tok_embeddings.weight

    def new_cache(self, bsz: int, max_seqlen: int) -> KVCache:
        """An empty KV cache for `bsz` sequences of at most `max_seqlen` tokens, on the model's device."""
        weight = self.norm.weight  # a float parameter in the activation dtype, even when linears are quantized
        rotations = rotary_table(self.freqs.to(weight.device), torch.arange(max_seqlen, device=weight.device))
        return KVCache(n_layers=self.args.n_layers, bsz=bsz, max_seqlen=max_seqlen, n_kv_heads=self.args.n_kv_heads,
                       head_dim=self.args.head_dim, dtype=weight.dtype, device=weight.device, rotations=rotations)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                taps: Iterable[str] = (), injections: Mapping[str, Injection] | None = None,
                return_logits: bool = True, last_logits_only: bool = False) -> ModelOutput:
        """Run the model on `tokens` (bsz, seqlen).

        attention_mask: (bsz, seqlen) bool, True = real token. Batches are LEFT-padded; positions count
            real tokens only, so a padded prompt gives the same logits as the prompt alone.
        cache: a KVCache from `new_cache`; the chunk is appended after the tokens already in it.
        taps: hook names to record (llama/hooks.py); injections: hook name -> fn(act) -> act.
        return_logits: False (with taps) stops after the deepest tap's layer and computes no logits.
        last_logits_only: logits of the last position only, (bsz, 1, vocab) (generation needs no more).
        """
        taps = (taps,) if isinstance(taps, str) else tuple(taps)
        hooks = Hooks(taps, injections, self.args.n_layers) if taps or injections else None  # names checked here
        last = self.args.n_layers
        if not return_logits:
            if not taps:
                raise ValueError("forward: return_logits=False needs at least one tap, or there is nothing to compute")
            last = hooks.deepest_tap
            if cache is not None and last < self.args.n_layers:
                raise ValueError("forward: a KV cache needs every layer run; pass return_logits=True")
        hook = hooks or no_hooks
        ctx = self._attention_context(tokens, attention_mask, cache)
        h = hook(EMBED, self.tok_embeddings(tokens))  # (bsz, seqlen, dim)
        for layer in self.layers[:last + 1]:
            h = layer(h, ctx, hook)
        logits = None
        if last == self.args.n_layers:
            h = hook(FINAL_NORM, self.norm(h))
            if return_logits:
                logits = self.output(h[:, -1:] if last_logits_only else h)  # (bsz, seqlen or 1, vocab)
        return ModelOutput(logits, hooks.recorded if hooks else {})

    def _attention_context(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None,
                           cache: KVCache | None) -> AttentionContext:
        """Positions, rotations and the attention mask of this chunk (once per forward, shared by all layers)."""
        if tokens.dim() != 2:
            raise ValueError(f"forward: tokens must be (bsz, seqlen), got shape {tuple(tokens.shape)}")
        if attention_mask is not None and (attention_mask.shape != tokens.shape or attention_mask.dtype != torch.bool):
            raise ValueError(f"forward: attention_mask must be a bool tensor of shape {tuple(tokens.shape)}")
        seqlen, device = tokens.shape[1], tokens.device
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: the fast causal path
        if cache is not None:
            start, end, positions = cache.reserve(attention_mask, seqlen)
            key_mask, padded = cache.mask[:, :end], cache.padded
        else:
            start, end, padded, key_mask = 0, seqlen, attention_mask is not None, attention_mask
            positions = (torch.arange(seqlen, device=device)[None] if attention_mask is None
                         else (attention_mask.cumsum(-1) - 1).clamp(min=0))  # (bsz or 1, seqlen)
        if cache is not None and cache.rotations is not None:
            freqs_cis = cache.rotations[positions]  # a lookup, not a table per step
        else:
            freqs_cis = rotary_table(self.freqs.to(device), positions)
        if not padded and (start == 0 or seqlen == 1):
            # causal from slot 0, or one new query that may see every key: no mask tensor at all
            return AttentionContext(freqs_cis, None, start == 0 and seqlen > 1, cache, start)
        query_slot = torch.arange(start, end, device=device)[:, None]
        key_slot = torch.arange(end, device=device)[None]
        allowed = key_slot <= query_slot  # (seqlen, n_keys) causal
        if padded:
            # padding keys are never seen; a padding query sees itself only, so no row is empty (NaN)
            allowed = (allowed & key_mask[:, None, :]) | (key_slot == query_slot)  # (bsz, seqlen, n_keys)
        return AttentionContext(freqs_cis, allowed.expand(tokens.shape[0], seqlen, end)[:, None], False, cache, start)
