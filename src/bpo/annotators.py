"""Annotators: a simulated human that says which of two responses is better.

One protocol (:class:`Annotator`): prompts and response pairs in, a :class:`Judgement` per pair
out. Scorers (reward model, exact judge, any Python callable) prefer the higher score; equal
scores are a tie (``choice`` None) and the trainer skips the pair. Every judgement is written
to the ledger (:mod:`bpo.ledger`) before training uses it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bpo.config import Config
from bpo.data import PromptRecord
from bpo.errors import BpoError
from bpo.judges import outcome


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


class RewardModelAnnotator(ScoreAnnotator):
    """Any ``AutoModelForSequenceClassification`` reward model (the paper: OpenAssistant deberta-v3-large-v2),
    read in its own tokenizer and input format (:class:`bpo.rm.RewardModel`), not the policy's.
    """

    def __init__(self, model: str, batch_size: int = 16, max_length: int = 0, device: str | None = None):
        from bpo.rm import RewardModel

        self.rm = RewardModel(model, batch_size, max_length, device)
        self.name = f"rm:{model}"
        self.notes = self.rm.notes  # its recorded accuracy; a length override that differs from its own

    def scores(self, prompts: Sequence[PromptRecord], responses: Sequence[str]) -> list[float]:
        return self.rm.scores([p.prompt for p in prompts], responses)


def load_callable(spec: str) -> Callable[..., Any]:
    """``package.module:fn`` or ``path/to/file.py:fn`` -> the function, with a clear error when it is not there.

    A file path needs no PYTHONPATH: the file is imported by its path.
    """
    module, _, attr = spec.rpartition(":")
    if not module or not attr:
        raise ValueError(f"annotator callable {spec!r} must look like 'package.module:fn' or 'path/to/file.py:fn'")
    try:
        if module.endswith(".py"):
            path = Path(module).expanduser()
            if not path.exists():
                raise ImportError(f"no such file {path}")
            loader = importlib.util.spec_from_file_location(f"bpo_user_{path.stem}", path)
            mod = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
        return getattr(mod, attr)
    except (ImportError, AttributeError, SyntaxError) as err:
        raise ValueError(f"cannot import annotator callable {spec!r}: {err}") from err


LETTER = {0: "A", 1: "B", None: "tie"}  # a pick between (first, second) as a judge's answer
PICK = {1.0: 0, 0.0: 1, 0.5: None}  # the first response's outcome as the preferred index (None: a tie)


class PairwiseAnnotator(PairsOnly):
    """A Python function that picks the better of two responses: ``fn(prompt, a, b) -> 0 | 1 | None``.

    It may return ``(choice, rationale)``; the rationale goes to the ledger. ``None`` is a tie (the
    pair is not trained on). Anything else is an error naming the function and the prompt. With
    ``both_orders`` it is asked again with the responses swapped, and a response is preferred only
    when it wins both times (a split verdict is a tie): what cancels an LLM's position bias.
    """

    def __init__(self, fn: Callable[..., Any], name: str, both_orders: bool = False):
        self.fn, self.name, self.both_orders = fn, name, both_orders
        order = (
            "asked in both orders (A/B, then B/A); a split verdict is a tie, not trained on"
            if both_orders
            else "asked in one order (annotator.both_orders=true cancels a position bias)"
        )
        self.notes = [f"annotator {name}: {order}"]

    def _ask(self, record: PromptRecord, a: str, b: str) -> tuple[int | None, str | None]:
        got = call_user(self.name, record, self.fn, record.prompt, a, b)
        choice, rationale = got if isinstance(got, tuple) and len(got) == 2 else (got, None)
        if choice not in (0, 1, None) or isinstance(choice, bool) or not isinstance(rationale, (str, type(None))):
            raise ValueError(
                f"annotator {self.name} returned {got!r} for prompt {record.id}; expected 0, 1, None "
                "(a tie), or (one of those, a rationale string)"
            )
        return choice, rationale

    def annotate(self, prompts: Sequence[PromptRecord], pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        out = []
        for record, (a, b) in zip(prompts, pairs):
            choice, rationale = self._ask(record, a, b)
            if not self.both_orders:
                out.append(Judgement(choice, None, rationale, unjudged="tie" if choice is None else None))
                continue
            swapped, why = self._ask(record, b, a)
            agreed = PICK[outcome(LETTER[choice], LETTER[swapped])]  # the LLM judge's rule: win both orders
            said = f"A/B: {LETTER[choice]}, B/A: {LETTER[swapped]}" + "".join(f"; {x}" for x in (rationale, why) if x)
            out.append(Judgement(agreed, None, said, calls=2, unjudged="tie" if agreed is None else None))
        return out


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


@register_annotator("pairwise")
def _pairwise(cfg: Config) -> Annotator:
    a = cfg.annotator
    return PairwiseAnnotator(load_callable(a.callable), f"pairwise:{a.callable}", a.both_orders)


class LLMJudgeAnnotator(PairsOnly):
    """A pairwise LLM judge over an OpenAI-compatible API (:class:`bpo.judges.HTTPPairwiseJudge`) as annotator.

    Each pair is asked in both orders; a response is preferred only when it wins both, a split
    verdict is a tie (not trained on). Answers are cached on disk (shared with ``bpo eval``), so a
    resumed or repeated run pays for no question twice; every judgement records what it cost.
    """

    def __init__(self, judge: Any, concurrency: int):
        self.judge, self.concurrency, self.name = judge, concurrency, judge.name

    def _one(self, record: PromptRecord, pair: tuple[str, str]) -> Judgement:
        spent: dict[str, int] = {}
        first, second = self.judge.both(record.prompt, pair[0], pair[1], spent)
        result = outcome(first, second)
        if result is None:
            why = "invalid: the judge's answer named neither response"
            return Judgement(None, None, why, spent, calls=2, unjudged="invalid")
        choice = PICK[result]
        why = {0: "A in both orders", 1: "B in both orders"}.get(
            choice, f"tie: order A/B answered {first}, order B/A answered {second}"
        )
        return Judgement(choice, None, why, spent, calls=2, unjudged="tie" if choice is None else None)

    def annotate(self, prompts: Sequence[PromptRecord], pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, prompts, pairs))  # in order, whatever order they finish in


def judge_cache(cfg: Config) -> Path:
    """Where HTTP judge answers are kept: one file shared by training annotators and ``bpo eval``."""
    from bpo.models import cache_dir

    return Path(cfg.annotator.cache) if cfg.annotator.cache else cache_dir() / "judge-cache.jsonl"


def http_judge(cfg: Config, url: str, model: str, api_key: str | None) -> Any:
    """The pairwise HTTP judge ``llm_judge`` and ``bpo eval --judge http`` share: the config's template,
    sampling, retries and time-out, and one answer cache."""
    from bpo.judges import HTTPPairwiseJudge, read_template

    a, e = cfg.annotator, cfg.eval
    template = read_template(a.judge_template) if a.judge_template else None
    return HTTPPairwiseJudge(
        url,
        model,
        judge_cache(cfg),
        api_key,
        e.judge_retries,
        timeout=e.judge_timeout,
        template=template,
        temperature=a.judge_temperature,
        max_tokens=a.judge_max_tokens,
    )


@register_annotator("llm_judge")
def _llm_judge(cfg: Config) -> Annotator:
    import os

    a = cfg.annotator
    return LLMJudgeAnnotator(http_judge(cfg, a.url, a.model, os.environ.get(a.api_key_env)), a.concurrency)


@register_annotator("human")
def _human(cfg: Config) -> Annotator:
    from bpo.human import HumanAnnotator  # people label in the browser: bpo label RUN

    return HumanAnnotator(cfg)


@register_annotator("callable")
def _callable(cfg: Config) -> Annotator:
    return ScoreAnnotator(load_callable(cfg.annotator.callable), f"callable:{cfg.annotator.callable}")


def build_annotator(cfg: Config) -> Annotator:
    """The annotator ``cfg.annotator.kind`` names."""
    return ANNOTATORS[cfg.annotator.kind](cfg)


def judge_notes(*judges: Annotator | None) -> list[str]:
    """What a user should know about the judges as they load: a reward model's recorded accuracy, a length
    it was not trained at, the order a pairwise function is asked in."""
    return [note for j in judges if j is not None for note in getattr(j, "notes", [])]


def judge_accuracy(judge: Annotator | None) -> dict | None:
    """The held-out accuracy recorded with a reward-model judge (``bpo rm``'s rm.json), if any."""
    rm = getattr(judge, "rm", None)
    return getattr(rm, "accuracy", None)


def build_gold(cfg: Config) -> Annotator:
    """The reward model ``eval.gold`` names: it judges the final evaluation and never trains the policy."""
    a = cfg.annotator
    return RewardModelAnnotator(cfg.eval.gold, a.batch_size, a.max_length, cfg.device or None)
