"""Scores, win rates and percentile-bootstrap intervals.

``win_rate`` is the paper's number: the share of all items where the system's score is strictly
higher (a tie is not a win). Ties are counted apart (``ties``, ``tie_rate``), and the common
ties-count-one-half figure is kept under its own name (``win_rate_ties_half``, where 0.5 means
no difference), each with its own bootstrap interval.
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


def at_chance(accuracy: dict) -> bool:
    """A judge's accuracy ``{accuracy, ci95, ...}`` whose 95% interval includes 0.5: not shown to beat a coin.
    Where it has a ``balanced`` accuracy (the pairs' preferred responses come from known sources), that one
    decides: a judge that always prefers one source beats 0.5 in plain accuracy without judging anything."""
    return (accuracy.get("balanced") or accuracy)["ci95"][0] <= 0.5


def balanced_accuracy(right: Sequence[float], groups: Sequence[str], n: int = 2000, seed: int = 0) -> dict:
    """The mean of the per-group accuracies, with a percentile bootstrap that resamples within each group.

    ``groups`` name where each pair's preferred response came from (TL;DR: the policy's summary or the human
    reference). A judge that always prefers one source scores that source's share in plain accuracy (0.64 on
    the TL;DR judged pairs) but exactly 0.5 here, so 0.5 is again the coin it must beat."""
    right, groups = np.asarray(right, dtype=float), np.asarray(groups)
    names = sorted(set(groups.tolist()))
    parts = [right[groups == g] for g in names]
    rng = np.random.default_rng(seed)
    means = np.mean([x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1) for x in parts], axis=0)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {
        "accuracy": float(np.mean([x.mean() for x in parts])),
        "ci95": [float(lo), float(hi)],
        "groups": {g: {"accuracy": float(x.mean()), "pairs": len(x)} for g, x in zip(names, parts)},
    }


def accuracy_text(acc: dict, what: str = "held-out accuracy") -> str:
    """``held-out accuracy 0.640 [0.540, 0.730] on 100 pairs``, and the balanced accuracy where there is one."""
    text = f"{what} {acc['accuracy']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] on {acc['pairs']} pairs"
    b = acc.get("balanced")
    if b:
        each = ", ".join(f"{g} {v['accuracy']:.3f} of {v['pairs']}" for g, v in b["groups"].items())
        text += (
            f"; balanced over the preferred response's source ({each}) {b['accuracy']:.3f} "
            f"[{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]"
        )
    rule = acc.get("length_rule")
    if rule:
        text += (
            f"; {rule['rule']}: {rule['accuracy']:.3f}, the judge minus it {rule['judge_minus_rule']:+.3f} "
            f"[{rule['ci95'][0]:+.3f}, {rule['ci95'][1]:+.3f}]"
        )
    return text


def mean_ci(values: Sequence[float], n: int = 2000, seed: int = 0) -> dict[str, float]:
    lo, hi = bootstrap_ci(values, n, seed)
    return {"mean": float(np.mean(values)), "ci_low": lo, "ci_high": hi, "n": len(values)}


def prompt_bootstrap_ci(by_seed: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the grand mean of a [seeds, prompts] array, resampling prompts.

    Every seed of a comparison answers the same eval prompts, starting from the same start
    responses, so values of one prompt are not independent across seeds: a prompt is resampled
    with all its seeds together (a cluster bootstrap). Pooling seeds' prompts as if independent
    would make the interval too narrow.
    """
    x = np.asarray(by_seed, dtype=float)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"prompt_bootstrap_ci needs a [seeds, prompts] array, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[1], size=(n, x.shape[1]))
    means = x[:, idx].mean(axis=(0, 2))
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def pooled_win_rate(scores: np.ndarray, against: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """:func:`win_rate` over all seeds' prompts ([seeds, prompts] arrays), intervals by prompt clusters."""
    a, b = np.asarray(scores, dtype=float), np.asarray(against, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"pooled_win_rate needs paired arrays, got {a.shape} and {b.shape}")
    out = win_rate(a.ravel(), b.ravel(), n, seed)
    out["ci_low"], out["ci_high"] = prompt_bootstrap_ci((a > b).astype(float), n, seed)
    out["win_rate_ties_half_ci"] = list(prompt_bootstrap_ci((a > b) + 0.5 * (a == b), n, seed))
    return out


# Two-sided 95% Student-t quantiles for 1..10 degrees of freedom; beyond that the Cornish-Fisher
# expansion below is within 0.002 of the exact value (t_20 = 2.086, t_30 = 2.042).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (no scipy needed)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


_T80 = (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879)  # one-sided 0.80 quantiles, df 1..10


def detectable_difference(per_seed: Sequence[float]) -> float:
    """The smallest true mean of ``per_seed`` (paired gaps, one per seed) that a two-sided 5% t-test over
    this many seeds detects with 80% power, at their observed spread: ``(t_0.975 + t_0.80) * sd / sqrt(n)``
    with n - 1 degrees of freedom (the usual approximation of the non-central t). nan below 2 seeds."""
    x = np.asarray(per_seed, dtype=float)
    if len(x) < 2:
        return float("nan")
    df = len(x) - 1
    t80 = _T80[df - 1] if df <= len(_T80) else 0.8416 + 0.8416 * (0.8416**2 + 1) / (4 * df)
    return float((t_quantile_975(df) + t80) * x.std(ddof=1) / np.sqrt(len(x)))


def seed_mean_ci(per_seed: Sequence[float]) -> dict[str, float]:
    """Mean over training seeds with a 95% Student-t interval.

    A bootstrap over prompts measures how well the eval set pins down one run; it does not see
    how much a second training run would differ. Treating each seed's mean as one observation
    does, and with a handful of seeds the t quantile (4.30 at 3 seeds) keeps the interval honest.
    """
    x = np.asarray(per_seed, dtype=float)
    out = {"mean": float(x.mean()) if len(x) else float("nan"), "n": len(x)}
    if len(x) < 2:
        return {**out, "sd": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    sd = float(x.std(ddof=1))
    half = t_quantile_975(len(x) - 1) * sd / np.sqrt(len(x))
    return {**out, "sd": sd, "ci_low": out["mean"] - half, "ci_high": out["mean"] + half}


def win_rate(scores: Sequence[float], against: Sequence[float], n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Win rate of ``scores`` over ``against`` (paired, per prompt) with its 95% interval."""
    if len(scores) != len(against):
        raise ValueError(f"win_rate needs paired scores, got {len(scores)} and {len(against)}")
    return summarize(outcomes_from_scores(scores, against), n_boot=n, seed=seed)


def outcomes_from_scores(scores: Sequence[float], against: Sequence[float]) -> list[float]:
    """Per-item outcome: 1 a strictly higher score, 0 a strictly lower one, 0.5 a tie."""
    bad = [i for i, (a, b) in enumerate(zip(scores, against)) if not (np.isfinite(a) and np.isfinite(b))]
    if bad:  # a NaN compares as neither higher nor lower: it would pass for a tie
        raise ValueError(f"non-finite judge score at item {bad[0]} ({scores[bad[0]]} vs {against[bad[0]]})")
    return [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(scores, against)]


def summarize(outcomes: Sequence[float], judge: str | None = None, n_boot: int = 2000, seed: int = 0) -> dict:
    """Win-rate fields from per-item outcomes (1 win, 0.5 tie, 0 loss); the one place they are counted.

    ``win_rate`` counts wins only (the paper); ``win_rate_ties_half`` counts a tie as half a win.
    """
    x = np.asarray(outcomes, dtype=float)
    wins = (x == 1.0).astype(float)
    lo, hi = bootstrap_ci(wins, n_boot, seed)
    half_lo, half_hi = bootstrap_ci(x, n_boot, seed)
    out = {
        "win_rate": float(wins.mean()) if len(x) else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "wins": int((x == 1.0).sum()),
        "ties": int((x == 0.5).sum()),
        "losses": int((x == 0.0).sum()),
        "n": len(x),
        "tie_rate": float((x == 0.5).mean()) if len(x) else float("nan"),
        "win_rate_ties_half": float(x.mean()) if len(x) else float("nan"),
        "win_rate_ties_half_ci": [half_lo, half_hi],
    }
    if judge is not None:
        out["judge"] = judge
    return out


def verdict(per_seed: Sequence[float], margin: float = 0.15) -> str:
    """What the paired per-seed gaps of a claim "A beats B" (A minus B, one per seed) support, in words:
    ``holds`` when the 95% t interval lies above 0; ``does not hold`` when it lies below 0 (B is ahead; "by
    less than" ``margin`` when inside it too) or inside +/- ``margin`` (no gap of that size); else ``not
    settled``, with the smallest gap these seeds would detect (:func:`detectable_difference`)."""
    d = seed_mean_ci(per_seed)
    n, lo, hi = d["n"], d["ci_low"], d["ci_high"]
    interval = f"{d['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    if n < 2:
        return f"not settled at {n} seed (no interval)"
    if lo > 0:
        return f"holds at {n} seeds: {interval}"
    if hi < 0:
        by = f", by less than {margin:.2f}" if lo > -margin else ""  # a negligible gap, not just who is ahead
        return f"does not hold at {n} seeds: the other is ahead{by}, {interval}"
    if -margin < lo and hi < margin:
        return f"does not hold at {n} seeds: no gap of {margin:.2f} or more, {interval}"
    return f"not settled at {n} seeds: {interval}; detectable difference {detectable_difference(per_seed):.2f}"


def start_groups(runs: dict[str, list[dict]]) -> list[tuple[list[str], dict]]:
    """A grid's methods grouped by the model they start from, in order of first appearance: runs with the same
    start responses (their scores where the text is not kept) share a start; methods with another SFT
    ensemble (K = 1, 5) do not. Each group: (its methods, one of its runs). ``runs``: method -> runs as
    ``bpo.eval.grid_report`` loads them (``rows``: eval items; ``items``: score arrays)."""
    groups: dict[tuple, tuple[list[str], dict]] = {}
    for method, rs in runs.items():
        for r in rs:
            key = tuple(row.get("start_response", s) for row, s in zip(r["rows"], r["items"]["start"]))
            methods = groups.setdefault(key, ([], r))[0]
            methods += [] if method in methods else [method]
    return list(groups.values())
