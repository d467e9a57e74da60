"""Per-latent statistics gathered in one streaming pass over a captured dataset.

For every latent: density (fraction of tokens where it fires), mean and max activation, a histogram
of its non-zero activations, the top N sentences by the mean of the latent over the sentence's tokens
and separately by its value on the last token, the top N token-level contexts (the token with up to
`context` tokens either side within its sentence, with the latent's value on each), and per label
the counts needed for AUROC and mean difference of the sentence-level (mean) activation.

Memory is bounded by (d_sae, N, 2 * context + 1) for the contexts plus one chunk of dense latents,
never by the dataset size: chunks are folded into fixed-size accumulators (`LatentAccumulator`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from latents.histogram import LogBins
from latents.source import Chunk
from latents.topn import TopNBuffer

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
    def update(self, h: torch.Tensor, chunk: Chunk, labels: torch.Tensor) -> None:
        """Fold one chunk in. h: (n, d_sae) latent activations of chunk.acts; labels: (n_s,) label
        index per sentence of the chunk, in order (-1 unlabelled)."""
        h = h.float()
        groups = sentence_groups(chunk.sentence.to(self.device))
        self.rows += h.shape[0]
        self._update_density(h)
        self._update_tokens(h, groups, chunk.first_row)
        self._update_sentences(h, groups, labels)
        self._update_base_counts(chunk.tokens.to(self.device), chunk.position.to(self.device))

    def _update_density(self, h: torch.Tensor) -> None:
        active = h > 0
        self.fired += active.sum(0)
        self.sum += h.sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, h.amax(0))
        rows, cols = active.nonzero(as_tuple=True)
        flat = cols * self.cfg.bins.n_bins + self.cfg.bins.index(h[rows, cols])
        self.hist.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def _update_tokens(self, h: torch.Tensor, groups, first_row: int) -> None:
        ordinals, inverse, counts = groups
        n, c = h.shape[0], self.cfg.context
        starts = (torch.cumsum(counts, 0) - counts)[inverse]                     # (n,) sentence start
        stops = starts + counts[inverse]                                          # (n,) one past its end
        m = min(self.cfg.top_n, n)
        scores, rows = torch.topk(h, m, dim=0)                                    # (m, d_sae)
        scores, rows = scores.T, rows.T                                           # (d_sae, m)
        window = rows[..., None] + torch.arange(-c, c + 1, device=h.device)      # (d_sae, m, W)
        valid = (window >= starts[rows][..., None]) & (window < stops[rows][..., None])
        latent = torch.arange(self.d_sae, device=h.device)[:, None, None]
        values = h.view(-1)[window.clamp(0, n - 1) * self.d_sae + latent]         # (d_sae, m, W)
        values = values.masked_fill(~valid, float("nan"))
        lo = rows - (rows - c).clamp(min=0).maximum(starts[rows])                  # tokens kept on the left
        self.top_tokens.merge(scores, {"row": rows + first_row, "lo": lo, "values": values,
                                       "sentence": ordinals[inverse[rows]]})

    def _update_sentences(self, h: torch.Tensor, groups, labels: torch.Tensor) -> None:
        ordinals, inverse, counts = groups
        n_s = len(ordinals)
        mean = torch.zeros(n_s, self.d_sae, device=h.device).index_add_(0, inverse, h)
        mean /= counts[:, None].float()                                           # (n_s, d_sae)
        last = h[torch.cumsum(counts, 0) - 1]                                     # (n_s, d_sae)
        m = min(self.cfg.top_n, n_s)
        for buffer, table in ((self.top_mean, mean), (self.top_last, last)):
            scores, index = torch.topk(table, m, dim=0)                           # (m, d_sae)
            buffer.merge(scores.T, {"sentence": ordinals[index.T]})
        self._update_labels(mean, labels)
        if self.random_sentences.numel():
            slot = torch.searchsorted(self.random_sentences, ordinals).clamp(max=len(self.random_sentences) - 1)
            hit = self.random_sentences[slot] == ordinals
            self.random_mean[slot[hit]] = mean[hit]

    def _update_labels(self, mean: torch.Tensor, labels: torch.Tensor) -> None:
        if self.n_labels == 0:
            return
        labelled = labels >= 0
        mean, labels = mean[labelled], labels[labelled].long()
        self.label_count += torch.bincount(labels, minlength=self.label_count.numel())
        self.label_sum.index_add_(0, labels, mean.double())
        sent, latent = (mean > 0).nonzero(as_tuple=True)
        bins = self.cfg.bins.index(mean[sent, latent])
        flat = (latent * self.label_hist.shape[1] + labels[sent]) * self.cfg.bins.n_bins + bins
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

Encoder = Callable[[torch.Tensor], torch.Tensor]  # (n, d_model) raw activations -> (n, d_sae) latents
