"""Streaming per-dimension statistics of activations (Welford / Chan, in float64).

One pass over the data, constant memory, and mergeable: workers each keep their own `RunningStats`
and the results are combined with Chan et al.'s parallel update, which is exact up to rounding.
"""

from __future__ import annotations

import numpy as np


class RunningStats:
    """Count, per-dimension mean and sum of squared deviations (M2), and the mean squared norm.

    `update(x)` takes a whole batch `(rows, d)` at once: the batch's own mean and M2 are computed in
    float64 and merged with the running values (Chan, Golub and LeVeque 1979), which is Welford's
    algorithm applied a batch at a time and keeps its numerical stability.
    """

    def __init__(self, d: int):
        self.d = d
        self.count = 0
        self.mean = np.zeros(d, dtype=np.float64)
        self.m2 = np.zeros(d, dtype=np.float64)
        self.sq_norm_mean = 0.0  # running mean of ||x||^2 over rows

    def update(self, x: np.ndarray, block: int = 4096) -> None:
        """Add the rows of `x` (rows, d), any float dtype, `block` rows at a time (bounded float64 copies)."""
        for start in range(0, x.shape[0], block):
            self._update_block(x[start:start + block])

    def _update_block(self, x: np.ndarray) -> None:
        n = x.shape[0]
        x64 = np.asarray(x, dtype=np.float64)
        batch_mean = x64.mean(axis=0)
        batch_m2 = ((x64 - batch_mean) ** 2).sum(axis=0)
        batch_sq_norm = float((x64 * x64).sum(axis=1).mean())
        self._merge(n, batch_mean, batch_m2, batch_sq_norm)

    def merge(self, other: "RunningStats") -> None:
        """Fold another accumulator (over disjoint rows) into this one."""
        if other.count:
            self._merge(other.count, other.mean, other.m2, other.sq_norm_mean)

    def _merge(self, n: int, mean: np.ndarray, m2: np.ndarray, sq_norm_mean: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.sq_norm_mean += (sq_norm_mean - self.sq_norm_mean) * (n / total)
        self.count = total

    @property
    def var(self) -> np.ndarray:
        """Population variance (divides by count), shape (d,)."""
        return self.m2 / self.count if self.count else np.zeros(self.d)

    def to_dict(self) -> dict:
        """JSON-ready: {"count", "mean": [d], "var": [d], "mean_sq_norm"} (population variance)."""
        return {"count": int(self.count), "mean": self.mean.tolist(), "var": self.var.tolist(),
                "mean_sq_norm": float(self.sq_norm_mean)}
