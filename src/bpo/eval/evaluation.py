"""The end of ``bpo train``: greedy responses of the start and the trained ensemble, judged, with win rates.

``bpo eval`` (any system against another) is :mod:`bpo.eval.systems`; both generate through
:func:`greedy`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from bpo.annotators import PairsOnly, judge_accuracy
from bpo.config import Config, SamplingConfig, sft_dir, sft_key
from bpo.data import load_source
from bpo.io import write_json, write_jsonl
from bpo.model.sampling import make_backend
from bpo.stats import mean_ci, win_rate

if TYPE_CHECKING:
    from bpo.model.ensemble import Ensemble
    from bpo.model.policy import Policy


class Trained(Protocol):
    """What the evaluation reads of a finished training run (``bpo.train.run.Run`` is one)."""

    cfg: Config
    policy: Policy
    ens: Ensemble
    annotator: Any
    gold: Any
    out: Path


def greedy(policy: Policy, records, cfg, ensemble: Ensemble | None = None, adapter: str | None = None) -> list[str]:
    """Greedy responses to ``records`` under ``adapter`` of ``ensemble`` (or the policy as it is)."""
    ids = [policy.encode_prompt(cfg.data.prompt_template.format(prompt=r.prompt)) for r in records]
    params = SamplingConfig(cfg.eval.max_new_tokens, temperature=0.0, batch_size=cfg.eval.batch_size)  # greedy
    return [g[0].text for g in make_backend(policy, ensemble, cfg).generate(ids, 1, params, adapter)]


def evaluate_run(run: Trained, progress: Progress) -> dict:
    """Greedy responses of the start (SFT ensemble) and the trained ensemble on held-out prompts.

    Scored by the run's annotator (the paper evaluates with the annotator's RM) or, with
    ``eval.gold``, by that judge, with the annotator's own verdicts beside it under ``annotator``.
    """
    cfg = run.cfg
    records = load_source(cfg.data, "eval", cfg.data.eval_examples, run.policy.tokenizer)
    responses = {}
    # the start model's greedy answers depend only on the SFT adapters and the eval settings:
    # runs that share them (a comparison grid) compute them once
    start_key = hashlib.sha256(
        json.dumps(
            [sft_key(cfg), cfg.device, cfg.train.merge, cfg.data.__dict__, _greedy_settings(cfg)],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:12]
    start_cache = sft_dir(cfg) / f"eval-start-{start_key}.json"
    size = cfg.eval.batch_size
    for name, adapter in (("start", "sft"), ("trained", "behavior")):
        bar = progress.add_task(f"eval {name}: greedy responses", total=len(records))
        texts = _cached_texts(start_cache, len(records)) if name == "start" else None
        if texts is not None:
            progress.advance(bar, len(records))
        else:  # batch by batch, the backend's own batches: the same responses, and progress
            texts = []
            for i in range(0, len(records), size):
                texts += greedy(run.policy, records[i : i + size], cfg, run.ens, adapter)
                progress.advance(bar, len(records[i : i + size]))
            if name == "start":
                write_json(start_cache, texts)
        responses[name] = texts
    scores, result = _judge(run.gold or run.annotator, records, responses, cfg.eval.bootstrap)
    if run.gold and not isinstance(run.annotator, PairsOnly):  # a pairwise judge (or people) gives no scores
        own, result["annotator"] = _judge(run.annotator, records, responses, cfg.eval.bootstrap)
        scores |= {f"annotator_{k}": v for k, v in own.items()}
    result["judge"] = (run.gold or run.annotator).name
    accuracy = judge_accuracy(run.gold or run.annotator)
    if accuracy:  # how much the figures above can be trusted: the judge's own held-out accuracy
        result["judge_accuracy"] = accuracy
    for name, texts in responses.items():
        result[f"{name}_samples"] = texts[:5]
    texts = {f"{k}_response": v for k, v in responses.items()}
    items = ({"id": r.id, **{k: v[i] for k, v in (scores | texts).items()}} for i, r in enumerate(records))
    write_jsonl(run.out / "eval_items.jsonl", items)
    return result


def in_chunks(judge, records, texts: list[str], done) -> list[float]:
    """``judge.scores`` a few forwards at a time, ``done(n)`` after each (minutes for 500 texts on a CPU).
    Chunks are whole multiples of a reward model's batch, so its batches, and scores, are the same."""
    step = getattr(getattr(judge, "rm", None), "batch_size", 0) * 4 or len(texts) or 1
    out: list[float] = []
    for i in range(0, len(texts), step):
        out += judge.scores(records[i : i + step], texts[i : i + step])
        done(len(texts[i : i + step]))
    return out


def fixed_scores(judge, records, texts: list[str]) -> list[float]:
    """Scores of texts that do not change between evaluations (the human references), kept on disk by
    judge and text: a reward model judges 500 references once, not at every ``bpo eval`` or run. Only
    judges that say what decides their scores (a reward model's files, format and length) are kept."""
    identity = getattr(getattr(judge, "rm", None), "identity", None)
    if identity is None:
        return judge.scores(records, texts)
    from bpo.io import append_lines, cache_dir, read_jsonl

    path = cache_dir() / "score-cache.jsonl"
    keys = [hashlib.sha256(json.dumps([identity, r.prompt, t]).encode()).hexdigest() for r, t in zip(records, texts)]
    known = {row["key"]: row["score"] for row in read_jsonl(path) if isinstance(row, dict) and "key" in row}
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        new = judge.scores([records[i] for i in todo], [texts[i] for i in todo])
        path.parent.mkdir(parents=True, exist_ok=True)
        append_lines(path, [json.dumps({"key": keys[i], "score": x}) for i, x in zip(todo, new)])
        known.update({keys[i]: x for i, x in zip(todo, new)})
    return [known[k] for k in keys]


def _cached_texts(path: Path, n: int) -> list[str] | None:
    """The start model's cached responses; None when there are none, or the file is damaged (recomputed)."""
    try:
        texts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    ok = isinstance(texts, list) and len(texts) == n and all(isinstance(t, str) for t in texts)
    return texts if ok else None


def _greedy_settings(cfg) -> dict:
    """The eval settings that decide greedy responses (not who judges them, nor the bootstrap)."""
    return {k: v for k, v in cfg.eval.__dict__.items() if k in ("max_new_tokens", "batch_size")}


def _judge(judge, records, responses: dict[str, list[str]], bootstrap: int) -> tuple[dict, dict]:
    """Scores of start, trained (and the human reference, when every record has one) and their win rates."""
    scores = {name: judge.scores(records, texts) for name, texts in responses.items()}
    result: dict = {"n": len(records), **{name: mean_ci(s, bootstrap) for name, s in scores.items()}}
    if all(r.reference is not None for r in records):  # the paper's metric: beat the human reference
        scores["reference"] = fixed_scores(judge, records, [r.reference for r in records])
        result["reference"] = mean_ci(scores["reference"], bootstrap)
        result["win_rate_vs_reference"] = win_rate(scores["trained"], scores["reference"], bootstrap)
        result["start_win_rate_vs_reference"] = win_rate(scores["start"], scores["reference"], bootstrap)
    delta = [a - b for a, b in zip(scores["trained"], scores["start"])]
    result["improvement"] = mean_ci(delta, bootstrap)
    result["win_rate_vs_start"] = win_rate(scores["trained"], scores["start"], bootstrap)
    return scores, result


def print_result(console: Console, r: dict, seconds: float) -> None:
    s, tr, imp, w = r["start"], r["trained"], r["improvement"], r["win_rate_vs_start"]
    console.print(
        f"\n[bold]score by {escape(str(r.get('judge', 'the judge')))}[/] on {r['n']} held-out prompts (greedy): "
        f"start {s['mean']:.2f} "
        f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}] -> trained {tr['mean']:.2f} [{tr['ci_low']:.2f}, {tr['ci_high']:.2f}]"
        f"\n[bold]improvement[/] {imp['mean']:+.2f} [{imp['ci_low']:+.2f}, {imp['ci_high']:+.2f}] (95% bootstrap)"
        f"\n[bold]win rate vs start[/] {w['win_rate']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}] "
        f"({w['wins']} wins, {w['ties']} ties, {w['losses']} losses; a tie is not a win, "
        f"ties as half {w['win_rate_ties_half']:.2f})\n[dim]total {seconds / 60:.1f} min[/]"
    )
    if "win_rate_vs_reference" in r:
        v, v0 = r["win_rate_vs_reference"], r["start_win_rate_vs_reference"]
        console.print(
            f"[bold]win rate vs reference[/] start {v0['win_rate']:.2f} [{v0['ci_low']:.2f}, {v0['ci_high']:.2f}] "
            f"-> trained {v['win_rate']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}] "
            f"({v['wins']} wins, {v['ties']} ties, {v['losses']} losses)"
        )
    own = r.get("annotator", {}).get("win_rate_vs_reference")
    if own:  # the run's annotator judging its own training: over-optimisation shows as a gap to the gold judge
        console.print(
            f"[bold]the annotator's own verdict[/] win rate vs reference {own['win_rate']:.2f} "
            f"[{own['ci_low']:.2f}, {own['ci_high']:.2f}] "
            f"(start {r['annotator']['start_win_rate_vs_reference']['win_rate']:.2f}; judge {r['judge']} above)"
        )
