"""The annotator contract: prompts and response pairs in, a :class:`Judgement` per pair out.

Scorers (reward model, exact judge, any Python callable) prefer the higher score; equal scores
are a tie (``choice`` None) and the trainer skips the pair. A :class:`Deferred` annotator (people)
answers later: the trainer queues a whole phase and the run stops until the verdicts are in.
Every judgement is written to the ledger (:mod:`bpo.train.ledger`) before training uses it.
A kind is made known with :func:`register_annotator`; ``bpo.registry.ANNOTATOR_KINDS`` is the
only list of kinds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bpo.config import Config
from bpo.data import PromptRecord
from bpo.errors import BpoError, ConfigError
from bpo.registry import ANNOTATOR_KINDS, AnnotatorKind


@dataclass
class Judgement:
    choice: int | None  # index (0 or 1) of the preferred response; None for a tie
    scores: tuple[float, ...] | None = None
    rationale: str | None = None
    usage: dict[str, int] | None = None  # what the judgement cost (requests, tokens), when it was paid for
    rejected: int | None = None  # best-of-n: the response trained against (None: the other of two)
    calls: int = 1  # what was asked: one per response scored, one per pairwise question, one per label
    unjudged: str | None = None  # why ``choice`` is None: "tie", "invalid" (an unreadable answer), "unlabelled"


class Annotator(Protocol):
    name: str

    def annotate(self, prompts: Sequence[PromptRecord], pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        """One judgement per pair: which response is preferred (None: a tie)."""
        ...

    def scores(self, prompts: Sequence[PromptRecord], responses: Sequence[str]) -> list[float]:
        """A score per response: what evaluation compares (a win is a strictly higher score)."""
        ...


class AnnotatorError(BpoError, ValueError):
    """A user's annotator failed or answered something that is not a judgement; the message names it."""


def call_user(name: str, record: PromptRecord, fn: Callable[..., Any], *args: Any) -> Any:
    """A user's function, its exception said in one line naming it and the prompt (not a traceback)."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - any failure of user code is reported as theirs, in one line
        raise AnnotatorError(
            f"annotator {name} raised {type(err).__name__}: {' '.join(str(err).split())[:200]} for prompt {record.id}"
        ) from None


def check_finite(name: str, record: PromptRecord, scores: Sequence[float]) -> None:
    """Refuse a NaN or infinite score: NaN > x is False, so it would silently pick a response."""
    if not all(math.isfinite(x) for x in scores):
        raise ValueError(
            f"annotator {name} gave a non-finite score ({', '.join(map(str, scores))}) for prompt {record.id}"
        )


class PairsOnly:
    """A judge that picks between two responses and gives no score per response."""

    name: str

    def scores(self, prompts: Sequence[PromptRecord], responses: Sequence[str]) -> list[float]:
        raise ValueError(f"annotator {self.name} picks between two responses; it gives no score per response")


class ScoreAnnotator:
    """Prefers the response with the higher score under ``score(prompt_record, response)``."""

    def __init__(self, score: Callable[[PromptRecord, str], float], name: str = "scorer"):
        self.score_one = score
        self.name = name

    def scores(self, prompts: Sequence[PromptRecord], responses: Sequence[str]) -> list[float]:
        out = []
        for p, r in zip(prompts, responses):
            got = call_user(self.name, p, self.score_one, p, r)
            if isinstance(got, bool) or not isinstance(got, (int, float)):
                raise AnnotatorError(f"annotator {self.name} returned {got!r} for prompt {p.id}; expected a number")
            out.append(float(got))
        return out

    def annotate(self, prompts: Sequence[PromptRecord], pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        a = self.scores(prompts, [x for x, _ in pairs])
        b = self.scores(prompts, [y for _, y in pairs])
        for p, sa, sb in zip(prompts, a, b):
            check_finite(self.name, p, (sa, sb))
        return [
            Judgement(None if sa == sb else int(sb > sa), (sa, sb), calls=2, unjudged="tie" if sa == sb else None)
            for sa, sb in zip(a, b)
        ]


@dataclass
class Sampled:
    """One prompt's samples in a phase, as the trainer hands them to a :class:`Deferred` annotator: what training
    needs to use its verdict later without sampling again."""

    index: int  # position among the phase's prompts
    prompt_id: str
    prompt: str
    responses: list[str]
    tokens: list[list[int]]
    behavior_logps: list[float | None]
    identical: bool  # every sample the same: nothing to ask


@runtime_checkable
class Deferred(Protocol):
    """An annotator whose verdicts arrive later (people): the trainer samples a whole phase, hands it over
    with :meth:`queue_phase` and asks :meth:`collect` for the verdicts, which stops the run
    (:class:`~bpo.errors.AwaitingLabels`) until enough are in. How it keeps and shows the pairs is its own."""

    def queued(self, phase: int, fingerprint: str) -> bool:
        """The phase's pairs are already queued (by this run: same ledger fingerprint)."""
        ...

    def queue_phase(
        self, phase: int, records: list[PromptRecord], samples: list[Sampled], fingerprint: str
    ) -> None: ...

    def collect(self, phase: int, out: str) -> list[tuple[Any, Judgement, int, list[dict]]]:
        """Per queued pair: (what was queued, with :class:`Sampled`'s fields; its judgement; the calls it cost; the
        labels given)."""
        ...


def register_annotator(name: str, build: Callable[[Config], Annotator], **about: Any) -> AnnotatorKind:
    """Make ``annotator.kind=NAME`` build its annotator with ``build(config)``; ``about`` fills the rest of
    :class:`~bpo.registry.AnnotatorKind` (whether it scores each response, its config check, its report)."""
    return ANNOTATOR_KINDS.register(name, AnnotatorKind(build, **about))


def build_annotator(cfg: Config) -> Annotator:
    """The annotator ``cfg.annotator.kind`` names."""
    return ANNOTATOR_KINDS.get(cfg.annotator.kind).build(cfg)


def check_annotator(cfg: Config) -> None:
    """Refuse what the annotator cannot work with, before anything is loaded (an LLM judge without its URL
    or with an unreadable template): the kind's own check."""
    kind = ANNOTATOR_KINDS.get(cfg.annotator.kind)
    if kind.check:
        kind.check(cfg)


def judge_notes(*judges: Annotator | None) -> list[str]:
    """What a user should know about the judges as they load: a reward model's recorded accuracy, a length
    it was not trained at, the order a pairwise function is asked in."""
    return [note for j in judges if j is not None for note in getattr(j, "notes", [])]


def judge_accuracy(judge: Annotator | None) -> dict | None:
    """The held-out accuracy recorded with a reward-model judge (``bpo rm``'s rm.json), if any."""
    rm = getattr(judge, "rm", None)
    return getattr(rm, "accuracy", None)


def judge_file(cfg: Config, pairs: Path, out: Path, say: Callable[[str], None]) -> tuple[int, float]:
    """``bpo annotate``: judge a file of pairs with the configured annotator, one JSONL row per pair to ``out``;
    returns the number judged and the share where the first response was preferred."""
    from bpo.data import load_pairs
    from bpo.io import write_jsonl

    kind = ANNOTATOR_KINDS.get(cfg.annotator.kind)
    if kind.task or kind.deferred:
        raise ConfigError(
            f"annotate needs a model annotator that judges any pairs (annotator.kind=reward_model, callable, pairwise "
            f"or llm_judge); the {cfg.annotator.kind} judge "
            + ("only knows its own generated posts" if kind.task else "labels a run's phases (bpo label RUN)")
        )
    check_annotator(cfg)
    rows = load_pairs(pairs, skip_bad=cfg.data.skip_bad_rows)
    annotator = build_annotator(cfg)
    for note in judge_notes(annotator):
        say(note)
    judged = annotator.annotate([PromptRecord(r.id, r.prompt) for r in rows], [(r.chosen, r.rejected) for r in rows])
    fields = ("choice", "scores", "rationale", "usage")
    write_jsonl(out, ({"id": r.id, **{k: getattr(j, k) for k in fields}} for r, j in zip(rows, judged)))
    return len(judged), sum(j.choice == 0 for j in judged) / max(len(judged), 1)
