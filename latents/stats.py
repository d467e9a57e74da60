"""Per-latent statistics gathered in one streaming pass over a captured dataset.

For every latent: density (fraction of tokens where it fires), mean and max activation, a histogram
of its non-zero activations, the top N sentences by the mean of the latent over the sentence's tokens
and separately by its value on the last token, the top N token-level contexts (the token with up to
`context` tokens either side within its sentence, with the latent's value on each), and per label
the counts needed for AUROC and mean difference of the sentence-level (mean) activation.

Each chunk is handled as its E = rows x k active (row, latent, value) entries, so the work per chunk
is O(E log E), never O(rows x d_sae); a context window's values are found by binary search among them. Memory is bounded by
(d_sae, N, 2 * context + 1) for the contexts plus one chunk, never by the dataset size: chunks are
folded into fixed-size accumulators (`LatentAccumulator`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple

import torch

from latents.histogram import LogBins
from latents.source import Chunk
from latents.topn import TopNBuffer, argsort, unique_inverse

_HASH_A, _HASH_B = 0x9E3779B1, 0x85EBCA77  # odd multipliers (Fibonacci / murmur-style mixing)


@dataclass
class StatsConfig:
    """What the statistics pass keeps."""
    top_n: int = 50                 # sentences and contexts kept per latent and per ranking
    context: int = 15               # tokens either side of a top token, within its sentence
    n_random_sentences: int = 200   # fixed random sentences (scored for every latent), for detection
    ngram_buckets: int = 1 << 22    # hashed bigram / trigram counts (base rates for explanations)
    seed: int = 0
    bins: LogBins = field(default_factory=LogBins)

    def to_dict(self) -> dict:
        return asdict(self)


def ngram_hash(grams: list[torch.Tensor], buckets: int) -> torch.Tensor:
    """Bucket of each n-gram; grams: n tensors (...,) of token ids, oldest first. buckets: power of 2."""
    key = torch.zeros_like(grams[0], dtype=torch.int64)
    for g in grams:  # int64 products wrap around: deterministic mixing, not a cryptographic hash
        key = (key ^ g.long()) * _HASH_A + _HASH_B
        key = key ^ (key >> 29)
    return key & (buckets - 1)


class Active(NamedTuple):
    """The active latents of a chunk as E (row, latent, value) entries."""
    row: torch.Tensor     # (E,) int64 row in the chunk
    latent: torch.Tensor  # (E,) int64
    value: torch.Tensor   # (E,) float32 > 0


def sentence_groups(sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ordinals (n_s,), inverse (n,) local sentence of each row, counts (n_s,)) from the (n,)
    sentence ordinal of each row; a sentence is a run of equal ordinals."""
    return torch.unique_consecutive(sentence, return_inverse=True, return_counts=True)


class LatentAccumulator:
    """Fixed-size running statistics for `d_sae` latents; `update` once per chunk of whole sentences."""

    def __init__(self, d_sae: int, n_labels: int, n_sentences: int, cfg: StatsConfig, *,
                 device: torch.device | str = "cpu"):
        self.cfg, self.d_sae, self.n_labels, self.device = cfg, d_sae, n_labels, torch.device(device)
        z = dict(device=self.device)
        self.rows = torch.zeros((), dtype=torch.int64, **z)
        self.fired = torch.zeros(d_sae, dtype=torch.int64, **z)
        self.sum = torch.zeros(d_sae, dtype=torch.float64, **z)
        self.max = torch.zeros(d_sae, **z)
        self.hist = torch.zeros(d_sae, cfg.bins.n_bins, dtype=torch.int64, **z)
        width = 2 * cfg.context + 1
        self.top_tokens = TopNBuffer(d_sae, cfg.top_n, {"row": ((), torch.int64), "lo": ((), torch.int64),
                                                        "sentence": ((), torch.int64),
                                                        "values": ((width,), torch.float16)}, self.device)
        self.top_mean = TopNBuffer(d_sae, cfg.top_n, {"sentence": ((), torch.int64)}, self.device)
        self.top_last = TopNBuffer(d_sae, cfg.top_n, {"sentence": ((), torch.int64)}, self.device)
        # Label association on the sentence-level (mean) activation: non-zero histogram per label,
        # sentence counts per label (zeros follow), sums for the mean difference.
        self.label_hist = torch.zeros(d_sae, max(n_labels, 1), cfg.bins.n_bins, dtype=torch.int64, **z)
        self.label_count = torch.zeros(max(n_labels, 1), dtype=torch.int64, **z)
        self.label_sum = torch.zeros(max(n_labels, 1), d_sae, dtype=torch.float64, **z)
        generator = torch.Generator().manual_seed(cfg.seed)
        chosen = torch.randperm(n_sentences, generator=generator)[:cfg.n_random_sentences]
        self.random_sentences = chosen.sort().values.to(self.device)           # (n_random,)
        self.random_mean = torch.zeros(len(chosen), d_sae, **z)
        self.unigram = torch.zeros(0, dtype=torch.int64, **z)
        self.bigram = torch.zeros(cfg.ngram_buckets, dtype=torch.int32, **z)
        self.trigram = torch.zeros(cfg.ngram_buckets, dtype=torch.int32, **z)

    @torch.no_grad()
    def update(self, values: torch.Tensor, indices: torch.Tensor, chunk: Chunk, labels: torch.Tensor) -> None:
        """Fold one chunk in. values, indices: (n, w) active latents of each row of chunk.acts (as an
        SAE's encode gives them; values <= 0 are ignored); labels: (n_s,) label index of each
        sentence of the chunk, in order (-1 unlabelled)."""
        n = values.shape[0]
        rows, slot = torch.nonzero(values > 0, as_tuple=True)
        active = Active(rows, indices[rows, slot], values[rows, slot].float())     # E entries
        groups = sentence_groups(chunk.sentence.to(self.device))
        self.rows += n
        self._update_density(active)
        self._update_tokens(active, values, indices, groups, chunk.first_row)
        self._update_sentences(active, groups, labels)
        self._update_base_counts(chunk.tokens.to(self.device), chunk.position.to(self.device))

    def _update_density(self, a: "Active") -> None:
        self.fired += torch.bincount(a.latent, minlength=self.d_sae)
        self.sum.index_add_(0, a.latent, a.value.double())
        self.max.scatter_reduce_(0, a.latent, a.value, reduce="amax")
        flat = a.latent * self.cfg.bins.n_bins + self.cfg.bins.index(a.value)
        self.hist.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def _update_tokens(self, a: "Active", values: torch.Tensor, indices: torch.Tensor, groups,
                       first_row: int) -> None:
        ordinals, inverse, counts = groups
        c, n = self.cfg.context, values.shape[0]
        starts = (torch.cumsum(counts, 0) - counts)[inverse]                     # (n,) sentence start
        stops = starts + counts[inverse]                                          # (n,) one past its end
        offsets = torch.arange(-c, c + 1, device=self.device)
        key = a.row * self.d_sae + a.latent                                       # (E,) one per entry
        order = argsort(key)
        keys, key_values = key[order], a.value[order]                             # sorted, for lookups

        def payload(sel: torch.Tensor) -> dict[str, torch.Tensor]:
            row, latent = a.row[sel], a.latent[sel]                               # (S,)
            window = row[:, None] + offsets                                       # (S, W)
            valid = (window >= starts[row][:, None]) & (window < stops[row][:, None])
            lo = row - (row - c).clamp(min=0).maximum(starts[row])                 # tokens kept on the left
            return {"row": row + first_row, "lo": lo, "sentence": ordinals[inverse[row]],
                    "values": window_values(window.clamp(0, n - 1), latent).masked_fill(~valid, float("nan"))}

        def window_values(window: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
            """(S, W) value of latent[s] on the rows window[s]: binary search of (row, latent) keys
            among the chunk's active entries (0 where the latent is not active on that row)."""
            query = window * self.d_sae + latent[:, None]                         # (S, W)
            where = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
            return torch.where(keys[where] == query, key_values[where], 0.0)

        self.top_tokens.offer(a.latent, a.value, payload)

    def _update_sentences(self, a: "Active", groups, labels: torch.Tensor) -> None:
        ordinals, inverse, counts = groups
        sent = inverse[a.row]                                                    # (E,) local sentence
        key, where = unique_inverse(sent * self.d_sae + a.latent)
        mean = torch.zeros(len(key), device=self.device).index_add_(0, where, a.value)
        s_sent, s_latent = key // self.d_sae, key % self.d_sae                    # (U,) one per pair
        mean /= counts[s_sent].float()
        self.top_mean.offer(s_latent, mean, lambda sel: {"sentence": ordinals[s_sent[sel]]})
        last = a.row == (torch.cumsum(counts, 0) - 1)[sent]                      # entries on a last token
        self.top_last.offer(a.latent[last], a.value[last], lambda sel: {"sentence": ordinals[sent[last][sel]]})
        self._update_labels(s_sent, s_latent, mean, labels)
        if self.random_sentences.numel():
            slot = torch.searchsorted(self.random_sentences, ordinals).clamp(max=len(self.random_sentences) - 1)
            hit = (self.random_sentences[slot] == ordinals)[s_sent]
            self.random_mean[slot[s_sent[hit]], s_latent[hit]] = mean[hit]

    def _update_labels(self, sent: torch.Tensor, latent: torch.Tensor, mean: torch.Tensor,
                       labels: torch.Tensor) -> None:
        """sent, latent, mean: (U,) the non-zero sentence-level activations; labels: (n_s,)."""
        if self.n_labels == 0:
            return
        known = labels[labels >= 0].long()
        self.label_count += torch.bincount(known, minlength=self.label_count.numel())
        label = labels[sent].long()
        ok = label >= 0
        label, latent, mean = label[ok], latent[ok], mean[ok]
        self.label_sum.view(-1).index_add_(0, label * self.d_sae + latent, mean.double())
        flat = (latent * self.label_hist.shape[1] + label) * self.cfg.bins.n_bins + self.cfg.bins.index(mean)
        self.label_hist.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def _update_base_counts(self, tokens: torch.Tensor, position: torch.Tensor) -> None:
        counts = torch.bincount(tokens, minlength=max(self.unigram.numel(), int(tokens.max()) + 1))
        self.unigram = torch.nn.functional.pad(self.unigram, (0, counts.numel() - self.unigram.numel()))
        self.unigram += counts
        for n, table in ((2, self.bigram), (3, self.trigram)):
            ok = position[n - 1:] >= n - 1                                          # all in one sentence
            grams = [tokens[i:len(tokens) - n + 1 + i][ok] for i in range(n)]
            if grams[0].numel():
                hashes = ngram_hash(grams, table.numel())
                table.index_add_(0, hashes, torch.ones_like(hashes, dtype=table.dtype))  # O(n), not O(buckets)

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every accumulated tensor (for resuming a long pass)."""
        state = {name: getattr(self, name) for name in _TENSORS}
        for prefix in ("top_tokens", "top_mean", "top_last"):
            state.update(getattr(self, prefix).state_dict(prefix))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in _TENSORS:
            setattr(self, name, state[name].to(self.device).clone())
        for prefix in ("top_tokens", "top_mean", "top_last"):
            getattr(self, prefix).load_state_dict(prefix, state)


_TENSORS = ("rows", "fired", "sum", "max", "hist", "label_hist", "label_count", "label_sum",
            "random_sentences", "random_mean", "unigram", "bigram", "trigram")

# (n, d_model) raw activations -> (values (n, w), indices (n, w)) of the active latents, as
# SparseAutoencoder.encode returns them (see sae_encoder).
Encoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def sae_encoder(sae) -> Encoder:
    """The encoder of a SparseAutoencoder as the statistics need it: raw x -> (values, indices)."""
    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, indices = sae.encode(x.to(sae.W_enc.dtype))
        return values, indices
    return encode


def dense_encoder(encode: Callable[[torch.Tensor], torch.Tensor]) -> Encoder:
    """Adapt an encoder returning dense latents (n, d_sae) to (values, indices) of its non-zeros."""
    def sparse(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = encode(x)
        width = max(1, int((h > 0).sum(-1).max()))
        return torch.topk(h, width, dim=-1)
    return sparse
