"""Fixed log-spaced bins for positive activations, and AUROC read off per-class histograms.

Bins are fixed in advance (no first pass to find the range): `bins_per_decade` bins per power of ten
from 10**min_exp to 10**max_exp; values outside are clamped into the first or last bin. Streaming
counts in fixed bins keep memory at (d_sae, n_bins) whatever the dataset size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogBins:
    """Log-spaced bins over [10**min_exp, 10**max_exp) for values > 0."""
    min_exp: int = -4
    max_exp: int = 4
    bins_per_decade: int = 10

    @property
    def n_bins(self) -> int:
        return (self.max_exp - self.min_exp) * self.bins_per_decade

    def index(self, values: torch.Tensor) -> torch.Tensor:
        """Bin of each value (> 0), int64, same shape."""
        position = (torch.log10(values.float()) - self.min_exp) * self.bins_per_decade
        return position.floor().long().clamp_(0, self.n_bins - 1)

    def edges(self) -> torch.Tensor:
        """(n_bins + 1,) bin edges."""
        exps = torch.arange(self.n_bins + 1, dtype=torch.float64) / self.bins_per_decade + self.min_exp
        return torch.pow(10.0, exps)


def auroc_from_histograms(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """AUROC of a score from its class-conditional histograms, per row.

    positive, negative: (..., n_bins) counts over the same ordered bins (bin 0 lowest). Values in one
    bin count as ties (half credit), so the result is the Mann-Whitney AUROC of the binned scores:
    P(score_pos > score_neg) + 0.5 P(score_pos == score_neg). Returns (...,) float64, NaN where a class
    is empty.
    """
    positive, negative = positive.double(), negative.double()
    below = torch.cumsum(negative, dim=-1) - negative  # negatives strictly below each bin
    wins = (positive * (below + 0.5 * negative)).sum(-1)
    total = positive.sum(-1) * negative.sum(-1)
    return torch.where(total > 0, wins / total.clamp(min=1), torch.full_like(wins, float("nan")))
