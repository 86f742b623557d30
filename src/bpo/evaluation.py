"""Scores, win rates and percentile-bootstrap intervals.

Win rate follows the paper: a win is a strictly higher judge score; ties are reported apart
and count one half in ``win_rate`` (so 0.5 means no difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], n: int = 2000, seed: int = 0) -> dict[str, float]:
    lo, hi = bootstrap_ci(values, n, seed)
    return {"mean": float(np.mean(values)), "ci_low": lo, "ci_high": hi, "n": len(values)}


def win_rate(scores: Sequence[float], against: Sequence[float], n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Win rate of ``scores`` over ``against`` (paired, per prompt) with its 95% interval."""
    if len(scores) != len(against):
        raise ValueError(f"win_rate needs paired scores, got {len(scores)} and {len(against)}")
    a, b = np.asarray(scores, dtype=float), np.asarray(against, dtype=float)
    outcome = (a > b).astype(float) + 0.5 * (a == b)
    lo, hi = bootstrap_ci(outcome, n, seed)
    return {
        "win_rate": float(outcome.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "wins": int((a > b).sum()),
        "ties": int((a == b).sum()),
        "losses": int((a < b).sum()),
        "n": len(a),
    }
