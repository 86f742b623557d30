"""Annotators from a user's Python: a score per response (``callable``) or a pick per pair (``pairwise``)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bpo.annotators.base import Annotator, Judgement, PairsOnly, ScoreAnnotator, call_user, register_annotator
from bpo.annotators.llm_judge import LETTER, PICK, outcome
from bpo.config import Config
from bpo.data import PromptRecord


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


def _callable(cfg: Config) -> Annotator:
    return ScoreAnnotator(load_callable(cfg.annotator.callable), f"callable:{cfg.annotator.callable}")


def _pairwise(cfg: Config) -> Annotator:
    a = cfg.annotator
    return PairwiseAnnotator(load_callable(a.callable), f"pairwise:{a.callable}", a.both_orders)


register_annotator(
    "callable",
    _callable,
    help="fn(prompt_record, response) -> float in annotator.callable; the higher score wins",
    label=lambda a: f"callable:{a.callable}",
)
register_annotator(
    "pairwise",
    _pairwise,
    help="fn(prompt, a, b) -> 0 | 1 | None in annotator.callable: a pick per pair, no score per response",
    per_response=False,
    label=lambda a: f"pairwise:{a.callable}",
    ledger_keys=("both_orders",),
)
