"""Scores, win rates and percentile-bootstrap intervals.

``win_rate`` is the paper's number: the share of all items where the system's score is strictly
higher (a tie is not a win). Ties are counted apart (``ties``, ``tie_rate``), and the common
ties-count-one-half figure is kept under its own name (``win_rate_ties_half``, where 0.5 means
no difference), each with its own bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def read_responses(path: str | Path, n: int) -> list[str]:
    """External responses aligned with the prompts: JSONL (``response`` or ``responses[0]``) or one per line."""
    from bpo.data import iter_rows

    path = Path(path)
    if path.suffix != ".jsonl":
        out = path.read_text(encoding="utf-8").splitlines()
    else:
        out = []
        for line, row in iter_rows(path):
            value = row.get("response", (row.get("responses") or [None])[0])
            if not isinstance(value, str):
                raise ValueError(f"{path}:{line}: field 'response' (or 'responses') is missing or not a string")
            out.append(value)
    if len(out) != n:
        raise ValueError(f"{path}: {len(out)} responses for {n} prompts; they must be aligned one to one")
    return out


def generate_greedy(cfg, records, adapter: str | None) -> list[str]:
    """Greedy responses of the base model, or of a saved PEFT adapter, to the eval prompts."""
    from peft import PeftModel

    from bpo.models import load_policy
    from bpo.sampling import HFBackend, SamplingParams

    policy = load_policy(cfg.model.name, cfg.device or None, cfg.model.dtype, cfg.model.chat_template)
    if adapter:
        policy.model = PeftModel.from_pretrained(policy.model, adapter).eval()
    ids = [policy.encode_prompt(cfg.data.prompt_template.format(prompt=r.prompt)) for r in records]
    params = SamplingParams(cfg.eval.max_new_tokens, do_sample=False, batch_size=cfg.eval.batch_size)
    return [g[0].text for g in HFBackend(policy).generate(ids, 1, params, None)]


def check_eval_args(cfg, out: Path, adapter, responses, against: str, judge: str, judge_url, judge_model) -> None:
    """Everything about a ``bpo eval`` call that can be wrong, checked before a model is loaded."""
    from bpo.config import ConfigError
    from bpo.models import check_adapter

    if judge not in ("task", "http"):
        raise ConfigError(f"--judge {judge!r}: use task (the config's annotator as scorer) or http (a pairwise LLM)")
    if judge == "http" and (not judge_url or not judge_model):
        raise ConfigError("--judge http needs --judge-url and --judge-model")
    cfg.check_sources(("eval",), task_judge=judge == "task")
    if adapter and responses:
        raise ConfigError("give --adapter or --responses, not both")
    if responses and not Path(responses).exists():
        raise ConfigError(f"--responses {responses}: no such file")
    for folder in [adapter] + ([against] if against not in ("reference", "base") and Path(against).is_dir() else []):
        if folder:
            check_adapter(folder, cfg.model.name)
    if against not in ("reference", "base") and not Path(against).exists():
        raise ConfigError(f"--against {against!r}: not reference, base, an adapter folder or a responses file")
    if (out / "checkpoints").exists() or (out / "config.yaml").exists():
        raise ConfigError(
            f"--out {out} is a training run folder; bpo eval would replace its eval.json: use --out {out}/eval-NAME"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create it ({err.strerror})") from None


def run_eval(
    cfg,
    out: Path,
    adapter: str | None = None,
    responses: str | None = None,
    against: str = "reference",
    judge: str = "task",
    judge_url: str | None = None,
    judge_model: str | None = None,
    api_key: str | None = None,
) -> dict:
    """Win rate of one system over another on the config's eval prompts; writes eval.json and items.jsonl.

    ``against`` is ``reference`` (the human reference text, as in the paper), a PEFT adapter
    folder, ``base`` (the model without adapter) or a responses file. ``judge`` is ``task``
    (the config's annotator as a scorer: the quickstart judge, a reward model or a callable)
    or ``http`` (a pairwise LLM judge).
    """
    from bpo.annotators import build_annotator
    from bpo.data import load_source
    from bpo.io import write_json, write_jsonl
    from bpo.models import load_policy
    from bpo.quickstart import QuickstartTask

    check_eval_args(cfg, out, adapter, responses, against, judge, judge_url, judge_model)
    task = QuickstartTask(cfg.data.seed)
    needs_tokenizer = cfg.data.max_prompt_tokens or cfg.data.max_response_tokens
    tokenizer = load_policy(cfg.model.name, "cpu").tokenizer if needs_tokenizer else None  # only for length filters
    records = load_source(cfg.data, "eval", cfg.data.eval_examples, task, tokenizer)
    if not records:
        raise ValueError(f"data.eval {cfg.data.eval!r} gave no prompts to evaluate on")
    if against == "reference":  # before any generation: a missing reference would waste it
        missing = [r.id for r in records if r.reference is None]
        if missing:
            raise ValueError(f"against=reference needs a reference for every prompt; {missing[0]} has none")
    mine = read_responses(responses, len(records)) if responses else generate_greedy(cfg, records, adapter)
    if against == "reference":
        other = [r.reference for r in records]
    elif against == "base":
        other = generate_greedy(cfg, records, None)
    elif Path(against).is_dir():
        other = generate_greedy(cfg, records, against)
    else:
        other = read_responses(against, len(records))
    if judge == "http":
        from bpo.judges import HTTPPairwiseJudge

        e = cfg.eval
        j = HTTPPairwiseJudge(
            judge_url, judge_model, out / "judge_cache.jsonl", api_key, e.judge_retries, timeout=e.judge_timeout
        )
        outcomes = [j.compare(r.prompt, a, b) for r, a, b in zip(records, mine, other)]
        scores = None
        name = j.name
    else:
        annotator = build_annotator(cfg.annotator, task)
        scores = (annotator.scores(records, mine), annotator.scores(records, other))
        outcomes = outcomes_from_scores(*scores)
        name = annotator.name
    valid = [o for o in outcomes if o is not None]  # None: the judge's answer stayed unreadable
    result = summarize(valid, name, cfg.eval.bootstrap)
    result.update(invalid=len(outcomes) - len(valid), against=against, system=adapter or responses or "base")
    result["config"] = cfg.to_dict()
    rows = []
    for i, r in enumerate(records):
        rows.append({"id": r.id, "response": mine[i], "against": other[i], "outcome": outcomes[i]})
        if scores:
            rows[-1].update(score=scores[0][i], against_score=scores[1][i])
    write_jsonl(out / "items.jsonl", rows)
    write_json(out / "eval.json", result)
    return result
