"""How good a reward model is: its accuracy on pairs, with intervals, and the per-pair scores behind it.

A judge's accuracy is the share of pairs where it scores the chosen response strictly above the
rejected one, with a percentile bootstrap interval over pairs. Where the file says which source each
preferred response came from (the TL;DR judged pairs: the policy's summary or the human reference,
64% policy), a judge that always prefers one source beats 0.5 without judging anything, so the
accuracy balanced over the sources (:func:`bpo.stats.balanced_accuracy`) is reported beside it and is
the figure that must beat a coin. The held-out pairs' scores are kept in ``heldout_scores.jsonl``
beside ``rm.json``, so every figure can be recomputed, and ``bpo rm ... --measure-only`` re-measures a
saved model on the same held-out prompts without training it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bpo.annotators.reward_model import RewardModelError, rewards
from bpo.data import PreferenceRecord
from bpo.io import write_json, write_jsonl
from bpo.stats import accuracy_text, at_chance, balanced_accuracy, bootstrap_ci

TRAIN_CHECK = 128  # training pairs whose accuracy is reported (the fit; a forward per pair is not free on a CPU)
HELDOUT_FILE = "heldout_scores.jsonl"  # per held-out pair: id, source of the chosen response, both scores


def pair_scores(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferenceRecord],
    max_length: int,
    batch_size: int,
    grad: bool = False,
    done: Callable[[int], None] | None = None,
    style: str = "concat",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and the rejected responses, in one forward per batch (``style``: how inputs are
    formatted; a ``bpo rm`` model reads prompt and response concatenated)."""
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    with torch.set_grad_enabled(grad):
        r = rewards(model, tokenizer, style, prompts, responses, max_length, 2 * batch_size, done)
    return r[: len(pairs)], r[len(pairs) :]


def scored(
    score: Callable[..., tuple[torch.Tensor, torch.Tensor]], pairs: Sequence[PreferenceRecord], progress, what: str
) -> list[dict]:
    """``score(pairs, done=...)`` of every pair as rows: id, group, chosen and rejected score."""
    done = None
    if progress is not None:  # minutes for a few hundred pairs on a CPU: say how far it is
        task = progress.add_task(f"reward model: scoring {len(pairs)} {what}", total=2 * len(pairs))
        done = lambda rows: progress.update(task, advance=rows)  # noqa: E731
    chosen, rejected = score(pairs, done=done)
    return [
        {"id": p.id, "group": p.group, "chosen": c, "rejected": r, "chars": [len(p.chosen), len(p.rejected)]}
        for p, c, r in zip(pairs, chosen.tolist(), rejected.tolist())
    ]


def accuracy(rows: Sequence[dict], resamples: int = 2000, seed: int = 0) -> dict:
    """Pairwise accuracy (chosen strictly above rejected) with a bootstrap interval over pairs; balanced over
    the chosen responses' sources too where the rows name more than one."""
    right = np.array([r["chosen"] > r["rejected"] for r in rows], dtype=float)
    lo, hi = bootstrap_ci(right, n=resamples, seed=seed)
    out = {
        "accuracy": float(right.mean()),
        "ci95": [lo, hi],
        "pairs": len(rows),
        "ties": sum(r["chosen"] == r["rejected"] for r in rows),
    }
    groups = [r.get("group", "") for r in rows]
    if len(set(groups)) > 1:
        out["balanced"] = balanced_accuracy(right, groups, resamples, seed)
    if all("chars" in r for r in rows):
        out["length_rule"] = length_rule(rows, right, groups, resamples, seed)
    return out


def length_rule(rows: Sequence[dict], right: np.ndarray, groups: list[str], resamples: int, seed: int) -> dict:
    """What a judge that reads only lengths scores on the same pairs: the longer (or, where that does better, the
    shorter) response wins; and the judge's accuracy minus the rule's, paired, with a bootstrap interval. Human
    and LLM labels often prefer the longer response, and a small reward model learns that first."""
    longer = np.array([a > b for a, b in (r["chars"] for r in rows)], dtype=float)
    shorter = np.array([a < b for a, b in (r["chars"] for r in rows)], dtype=float)
    rule, name = (longer, "longer") if longer.mean() >= shorter.mean() else (shorter, "shorter")
    lo, hi = bootstrap_ci(right - rule, n=resamples, seed=seed)
    out = {
        "rule": f"the {name} response wins",
        "accuracy": float(rule.mean()),
        "judge_minus_rule": float((right - rule).mean()),
        "ci95": [lo, hi],
    }
    if len(set(groups)) > 1:
        out["balanced"] = balanced_accuracy(rule, groups, resamples, seed)["accuracy"]
    return out


def measured(model: Any, tokenizer: Any, train: list, held: list, s: Any, progress: Any) -> tuple[dict, list[dict]]:
    """Accuracy on the first training pairs (the fit) and on the held-out pairs, and the held-out rows."""

    def score(pairs, done=None):
        model.eval()
        return pair_scores(model, tokenizer, pairs, s.max_length, s.batch_size, done=done)

    fit = accuracy(scored(score, train[:TRAIN_CHECK], progress, "training pairs"), seed=s.seed)
    rows = scored(score, held, progress, "held-out pairs") if held else []
    return {"train": fit, "heldout": accuracy(rows, seed=s.seed) if rows else None}, rows


def remeasure(out: Path, held: list, split: dict, s: Any, progress: Any) -> dict:
    """``--measure-only``: the saved reward model ``out`` scored on its held-out pairs again, as the annotator
    loads it; ``rm.json``'s held-out accuracy and warnings are replaced and the scores written beside it. The
    split must be the one it was trained on (the same training-prompt digest)."""
    import json

    from bpo.annotators.reward_model import RewardModel

    result = json.loads((out / "rm.json").read_text())
    if result.get("split", {}).get("train_prompts_sha256") != split["train_prompts_sha256"]:
        raise RewardModelError(
            f"{out} was trained on other prompts than this split's part {split['part']} (split seed {split['seed']}): "
            "pass the --part, --split-seed, --holdout and --exclude it was trained with"
        )
    if not held:
        raise RewardModelError(f"--holdout {s.holdout} leaves no held-out pairs to measure {out} on")
    rm = RewardModel(str(out), device=s.device or None)

    def score(pairs, done=None):  # as the annotator scores: its own format and length
        return pair_scores(rm.model, rm.tokenizer, pairs, rm.max_length, s.batch_size, done=done, style=rm.style)

    rows = scored(score, held, progress, "held-out pairs")
    result["heldout"] = accuracy(rows, seed=result.get("init_seed", 0))
    result["warnings"] = rm_warnings(result)
    write_jsonl(out / HELDOUT_FILE, rows)
    write_json(out / "rm.json", result)
    return result


def rm_warnings(result: dict) -> list[str]:
    """What makes a reward model's figures, or its use as a judge, doubtful."""
    out = []
    if result.get("degenerate_pairs_left_out"):
        out.append(
            f"warning: left out {result['degenerate_pairs_left_out']} pairs whose chosen and rejected responses are "
            "the same (no preference to learn)"
        )
    held = result.get("heldout")
    if held and at_chance(held):
        figure = "balanced accuracy" if held.get("balanced") else "held-out accuracy"
        a = held.get("balanced") or held
        out.append(
            f"warning: {figure} {a['accuracy']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]: its interval includes "
            "0.5, so this judge is not shown to beat a coin"
        )
    rule = (held or {}).get("length_rule")
    if rule and rule["ci95"][0] <= 0:
        out.append(
            f"warning: not shown to judge better than the length rule ({rule['rule']}, {rule['accuracy']:.3f} on the "
            f"same pairs): accuracy minus the rule's {rule['judge_minus_rule']:+.3f} [{rule['ci95'][0]:+.3f}, "
            f"{rule['ci95'][1]:+.3f}]"
        )
    if result["loss_last"] > result["loss_first"]:
        out.append(f"warning: the training loss rose ({result['loss_first']:.3f} -> {result['loss_last']:.3f})")
    return out


def summary(out: Path, result: dict) -> list[str]:
    """What ``bpo rm`` prints: where the model is, its loss, its accuracies with intervals, its warnings."""
    tr, held, split = result["train"], result["heldout"], result["split"]
    lines = [
        f"reward model: {out}  ({result['pairs_train']} training pairs, loss {result['loss_first']:.3f} -> "
        f"{result['loss_last']:.3f})",
        f"part {split['part']} of the {split['prompts_in_file']} prompts (split seed {split['seed']}): "
        f"{split['prompts_train']} training and {split['prompts_heldout']} held-out prompts, "
        f"{split['prompts_excluded']} excluded; init seed {result['init_seed']}",
        accuracy_text(tr, f"accuracy on {tr['pairs']} training pairs:").replace(f" on {tr['pairs']} pairs", ""),
    ]
    if held:
        lines.append(accuracy_text(held, "held-out accuracy:"))
    return lines + result["warnings"]
