"""The one error a setting raises when its value is not allowed, and the checks that raise it.

Each setting is checked once, where it enters: in the `__post_init__` of the config dataclass that
holds it. The error names the field and the value; `cli.build` turns the field into its flag
(`--k 0: ...`), so libraries never speak of command lines.
"""

from __future__ import annotations

import math
from typing import Any, Iterable


class SettingError(ValueError):
    """`field` may not be `value`: `problem` says what it may be."""

    def __init__(self, field: str, value: Any, problem: str):
        self.field, self.value, self.problem = field, value, problem
        super().__init__(f"{field} {value!r}: {problem}")


def check_choice(field: str, value: Any, allowed: Iterable[str]) -> None:
    """`value` must be one of `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise SettingError(field, value, f"choose one of {', '.join(allowed)}")


def check_int(field: str, value: Any, lowest: int, highest: int | None = None) -> None:
    """`value` must be an integer (not a bool) in [lowest, highest]."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lowest
    if not ok or (highest is not None and value > highest):
        span = f">= {lowest}" if highest is None else f"from {lowest} to {highest}"
        raise SettingError(field, value, f"must be an integer {span}")


def check_number(field: str, value: Any, lowest: float = 0.0, highest: float | None = None) -> None:
    """`value` must be a finite number in [lowest, highest]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value >= lowest) or (highest is not None and value > highest):
        span = f">= {lowest:g}" if highest is None else f"from {lowest:g} to {highest:g}"
        raise SettingError(field, value, f"must be a finite number {span}")


# Every seed feeds torch.manual_seed (which takes up to 2^64 - 1), numpy's default_rng (>= 0) and the
# seeded hashes of data/text.py (2 x seed + a few must fit in 64 bits): 32 bits suit them all.
SEED_MAX = 2**32 - 1


def check_seed(field: str, value: Any) -> None:
    """`value` must be a seed every random generator here accepts: an integer from 0 to SEED_MAX."""
    check_int(field, value, 0, SEED_MAX)
