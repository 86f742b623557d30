"""Annotators: a simulated human that says which of two responses is better.

One protocol (:class:`Annotator`): prompts and response pairs in, a :class:`Judgement` per pair
out. Scorers (reward model, exact judge, any Python callable) prefer the higher score; equal
scores are a tie (``choice`` None) and the trainer skips the pair. Every judgement is written
to the ledger (:mod:`bpo.ledger`) before training uses it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bpo.config import Config
from bpo.data import PromptRecord


@dataclass
class Judgement:
    choice: int | None  # index (0 or 1) of the preferred response; None for a tie
    scores: tuple[float, float] | None = None
    rationale: str | None = None


class Annotator(Protocol):
    name: str

    def annotate(self, prompts: Sequence[PromptRecord], pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        """One judgement per pair: which response is preferred (None: a tie)."""
        ...

    def scores(self, prompts: Sequence[PromptRecord], responses: Sequence[str]) -> list[float]:
        """A score per response: what evaluation compares (a win is a strictly higher score)."""
        ...


class ScoreAnnotator:
    """Prefers the response with the higher score under ``score(prompt_record, response)``."""

    def __init__(self, score: Callable[[PromptRecord, str], float], name: str = "scorer"):
        self.score_one = score
        self.name = name

    def scores(self, prompts: Sequence[PromptRecord], responses: Sequence[str]) -> list[float]:
        return [float(self.score_one(p, r)) for p, r in zip(prompts, responses)]

    def annotate(self, prompts: Sequence[PromptRecord], pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        a = self.scores(prompts, [x for x, _ in pairs])
        b = self.scores(prompts, [y for _, y in pairs])
        for p, sa, sb in zip(prompts, a, b):
            if not (math.isfinite(sa) and math.isfinite(sb)):  # NaN > x is False: it would silently pick 0
                raise ValueError(f"annotator {self.name} gave a non-finite score ({sa}, {sb}) for prompt {p.id}")
        return [Judgement(None if sa == sb else int(sb > sa), (sa, sb)) for sa, sb in zip(a, b)]


class RewardModelAnnotator(ScoreAnnotator):
    """Any ``AutoModelForSequenceClassification`` reward model (the paper: OpenAssistant deberta-v3-large-v2),
    read in its own tokenizer and input format (:class:`bpo.rm.RewardModel`), not the policy's.
    """

    def __init__(self, model: str, batch_size: int = 16, max_length: int = 1024, device: str | None = None):
        from bpo.rm import RewardModel

        self.rm = RewardModel(model, batch_size, max_length, device)
        self.name = f"rm:{model}"

    def scores(self, prompts: Sequence[PromptRecord], responses: Sequence[str]) -> list[float]:
        return self.rm.scores([p.prompt for p in prompts], responses)


def load_callable(spec: str) -> Callable[..., Any]:
    """``package.module:function`` -> the function, with a clear error when it is not there."""
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"annotator callable {spec!r} must look like 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import annotator callable {spec!r}: {err}") from err


ANNOTATORS: dict[str, Callable[[Config], Annotator]] = {}
Report = Callable[[dict[str, list[dict]]], list[str]]
REPORTS: dict[str, Report] = {}  # kind -> extra markdown for `bpo compare` (runs by method -> lines)


def register_annotator(
    kind: str, report: Report | None = None
) -> Callable[[Callable[[Config], Annotator]], Callable[[Config], Annotator]]:
    """Make ``annotator.kind=KIND`` build its annotator with ``fn(config)`` (PEFT's registry pattern).

    ``report`` adds a section to ``bpo compare``'s report for runs judged by this kind: a judge
    that can say *why* it scored as it did (the quickstart judge counts facts and distractors).
    """

    def add(fn: Callable[[Config], Annotator]) -> Callable[[Config], Annotator]:
        ANNOTATORS[kind] = fn
        if report:
            REPORTS[kind] = report
        return fn

    return add


def _quickstart_report(runs: dict[str, list[dict]]) -> list[str]:
    from bpo.quickstart import breakdown

    return breakdown(runs)


@register_annotator("quickstart", report=_quickstart_report)
def _quickstart(cfg: Config) -> Annotator:
    from bpo.quickstart import QuickstartTask  # the judge needs the task that made the posts

    return ScoreAnnotator(QuickstartTask(cfg.data.seed).score, "quickstart-judge")


@register_annotator("reward_model")
def _reward_model(cfg: Config) -> Annotator:
    a = cfg.annotator
    return RewardModelAnnotator(a.model, a.batch_size, a.max_length)


@register_annotator("callable")
def _callable(cfg: Config) -> Annotator:
    return ScoreAnnotator(load_callable(cfg.annotator.callable), f"callable:{cfg.annotator.callable}")


def build_annotator(cfg: Config) -> Annotator:
    """The annotator ``cfg.annotator.kind`` names."""
    return ANNOTATORS[cfg.annotator.kind](cfg)


def build_gold(cfg: Config) -> Annotator:
    """The reward model ``eval.gold`` names: it judges the final evaluation and never trains the policy."""
    a = cfg.annotator
    return RewardModelAnnotator(cfg.eval.gold, a.batch_size, a.max_length, cfg.device or None)
