"""A pairwise LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint.

Each pair is asked in both orders (A/B, then B/A) to cancel position bias: a response wins only
when the judge prefers it both times; a split verdict is a tie. Every answer is a paid call, so
answers are appended (fsync'd) to a cache keyed by everything that shapes the answer (URL, model,
prompt template, temperature, max tokens, prompt, first, second) and a rerun asks nothing it asked
before. The cache keeps each answer's raw text and reads it again on load, so a reading fixed later
applies to answers bought earlier. A judge may answer "tie"; a tie in either order is a tie.

Faults: connection errors, time-outs, HTTP 429 and 5xx, a body cut short, a 200 that is not JSON
or has no ``choices`` are retried with exponential backoff and end in one line naming the URL. An
answer that names no response is asked again and, if it stays unreadable, counted as invalid
(reported apart), never cached and never taken for a tie. Error bodies are not echoed: they can
carry request headers or keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bpo.annotators.base import Annotator, Judgement, PairsOnly, register_annotator
from bpo.config import Config
from bpo.data import PromptRecord
from bpo.errors import BpoError, ConfigError
from bpo.io import append_lines, cache_dir, read_jsonl
from bpo.web import TRANSIENT, post_json


class JudgeError(BpoError, RuntimeError):
    """The judge could not be asked; the message names its URL and the last problem."""


# Letters are case-sensitive: "I prefer a concise reply, so B." names B, and the article "a" is
# not response A. A capital "A" that opens a noun phrase ("A tie.", "A clear win for B") is an
# article too: it is followed by a lowercase word that is not a verb or a connective.
_LETTER_WORDS = (
    "is|was|wins|won|seems|looks|appears|provides|gives|has|does|answers|addresses|offers|better|because|"
    "since|and|or|over|than|as|would|should|could|clearly|definitely|instead|but|stays|remains"
)
_ARTICLE = re.compile(rf"\bA(?=\s+(?!(?:{_LETTER_WORDS})\b)[a-z])")
_NAMES = r"(?i:response|answer|output|option|assistant)"
_STRONG = [  # a letter named as the winner: read first, whatever else the answer mentions
    re.compile(r"^\[*\(?([AB])\)?\]*[\s.:!)]*$"),  # "A", "(B)", "B.", "[[A]]"
    re.compile(rf"\b{_NAMES}\s*\(?([AB])\)?\s+(?i:is)\s+(?:\w+\s+)?(?i:better|preferred|superior|stronger)"),
    re.compile(r"(?:^|[.;!\n]\s*)\(?([AB])\)?\s+is\s+(?:\w+\s+)?(?:better|preferred|superior|stronger)"),
    re.compile(rf"\b(?i:answer|winner|verdict|choice|preference)\s*(?i:is|:)\s*(?:{_NAMES}\s*)?\(?([AB])\)?\b"),
    re.compile(rf"\b(?i:prefer|choose|pick|select)\s+(?:{_NAMES}\s*)?\(?([AB])\)?\b"),
]
_TIE = re.compile(r"(?i)\b(?:tie|tied|draw|equally|neither\s+(?:response|answer|one|is))\b")
_LEADING = re.compile(rf"^(?:{_NAMES}\s*)?\(?([AB])\)?\b")  # "B, because ..."
_ANY = re.compile(r"\b([AB])\b")  # the one letter an answer mentions


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "tie" from a judge's answer; None when it names neither (or both) and no tie.

    Read in this order: a JSON object's verdict field (also inside a code fence); a letter named
    as the winner ("the answer is B", "I prefer response A", "B is better"); a tie ("a tie",
    "equally good", "neither is better"); an answer that opens with a letter; the one letter it
    mentions. The whole answer being a single lowercase "a"/"b" counts as that letter.
    """
    text = text.strip()
    found = re.search(r"\{.*\}", text, re.S)
    try:
        obj = json.loads(found.group(0)) if found else None
    except (json.JSONDecodeError, ValueError):
        obj = None
    if isinstance(obj, dict):
        for key in ("winner", "choice", "answer", "preferred", "verdict", "better"):
            if isinstance(obj.get(key), str):
                return parse_verdict(obj[key])
        return None
    plain = _ARTICLE.sub("a", re.sub(r"[*_`#\"']", "", text)).strip()
    if plain in ("a", "b"):
        return plain.upper()
    for pattern in _STRONG:
        letters = set(pattern.findall(plain))
        if len(letters) == 1:
            return letters.pop()
    if _TIE.search(plain):
        return "tie"
    for pattern in (_LEADING, _ANY):
        letters = set(pattern.findall(plain))
        if len(letters) == 1:
            return letters.pop()
    return None


def read_template(path: str | Path) -> str:
    """A judge prompt from a file: it must name {prompt}, {a} and {b} and no other field."""
    path = Path(path)
    where = f"judge.template = {path}"
    try:
        template = path.read_text(encoding="utf-8")
        template.format(prompt="", a="", b="")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: cannot read it ({type(err).__name__}: {err})") from None
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(
            f"{where}: {err} is not one of its fields {{prompt}}, {{a}}, {{b}} (write a literal brace as {{{{ or }}}})"
        ) from None
    missing = [f for f in ("{prompt}", "{a}", "{b}") if f not in template]
    if missing:
        raise ConfigError(f"{where}: it lacks {', '.join(missing)}")
    return template


class HTTPPairwiseJudge:
    TEMPLATE = (
        "Which of the two responses below answers the user's request better? Reply with exactly one "
        "letter: A or B.\n\n### Request\n{prompt}\n\n### Response A\n{a}\n\n### Response B\n{b}\n"
    )

    def __init__(
        self,
        base_url: str,
        model: str,
        cache: str | Path,
        api_key: str | None = None,
        retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 60.0,
        template: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 16,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.template, self.temperature, self.max_tokens = template or self.TEMPLATE, temperature, max_tokens
        self.cache_path = Path(cache)
        # the raw answer is kept and read again on load: a parser fix re-reads every cached answer
        self.cache: dict[str, str] = {}
        for row in read_jsonl(self.cache_path):
            verdict = parse_verdict(row["text"]) if isinstance(row.get("text"), str) else None
            if verdict is not None:
                self.cache[row["key"]] = verdict
        self.name = f"http:{model}"
        self.requests = 0  # HTTP requests made by this instance (cache hits excluded, retries included)
        self.invalid = 0  # questions whose answers stayed unreadable
        self._lock = threading.Lock()  # annotators ask from several threads: one cache line, one count at a time
        self.journal: Path | None = None  # a run's judge-requests.jsonl: one line per request sent

    def _key(self, prompt: str, first: str, second: str) -> str:
        """Everything that shapes the answer: endpoint, model, the prompt template, sampling, both texts in order."""
        template = hashlib.sha256(self.template.encode()).hexdigest()
        shape = [self.url, self.model, template, self.temperature, self.max_tokens, prompt, first, second]
        return hashlib.sha256(json.dumps(shape).encode()).hexdigest()

    def _post(self, body: bytes, spent: dict[str, int], key: str = "") -> str:
        """The answer text of one request, retrying transient faults; a JudgeError when they persist.

        ``spent`` counts what was paid for: requests (retries included) and the tokens the server reports.
        With a ``journal`` every request is written there (fsync'd) before it is sent, so a kill loses
        no count: the requests in flight at a kill are counted, and only they are bought again.
        """
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            with self._lock:
                self.requests += 1
                if self.journal is not None:
                    append_lines(self.journal, [json.dumps({"time": round(time.time(), 3), "question": key[:16]})])
            spent["requests"] = spent.get("requests", 0) + 1
            try:
                payload = post_json(self.url, body, self.timeout, self.api_key)
                usage = payload.get("usage") if isinstance(payload, dict) else None
                for k in ("prompt_tokens", "completion_tokens"):
                    if isinstance(usage, dict) and isinstance(usage.get(k), int):
                        spent[k] = spent.get(k, 0) + usage[k]
                return str(payload["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as err:  # before URLError, its parent
                problem = f"HTTP {err.code} {err.reason}"  # the body is not echoed: it may hold headers or keys
                if err.code != 429 and err.code < 500:
                    raise JudgeError(f"judge {self.url} answered {problem}; check the URL, model and API key") from None
            except TRANSIENT as err:
                problem = f"{type(err).__name__}: {str(err)[:120]}" if not isinstance(err, KeyError) else "no choices"
        raise JudgeError(f"judge {self.url} failed after {self.retries + 1} tries (last: {problem})")

    def ask(self, prompt: str, first: str, second: str, spent: dict[str, int] | None = None) -> str | None:
        """The judge's pick between ``first`` (A) and ``second`` (B), or "tie"; None when it stays unreadable."""
        spent = {} if spent is None else spent
        key = self._key(prompt, first, second)
        if key in self.cache:
            return self.cache[key]
        body = json.dumps(
            {
                "model": self.model,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": self.template.format(prompt=prompt, a=first, b=second)}],
            }
        ).encode()
        for _ in range(self.retries + 1):
            text = self._post(body, spent, key)
            answer = parse_verdict(text)
            if answer is not None:
                with self._lock:
                    self.cache[key] = answer
                    self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                    append_lines(self.cache_path, [json.dumps({"key": key, "text": text, "answer": answer})])
                return answer
        with self._lock:
            self.invalid += 1
        return None

    def both(self, prompt: str, a: str, b: str, spent: dict[str, int] | None = None) -> tuple[str | None, str | None]:
        """The answers with ``a`` as A, then with ``a`` as B."""
        return self.ask(prompt, a, b, spent), self.ask(prompt, b, a, spent)

    def compare(self, prompt: str, a: str, b: str, spent: dict[str, int] | None = None) -> float | None:
        """1 when ``a`` wins in both orders, 0 when ``b`` does, 0.5 for a tie or a split; None if unreadable."""
        return outcome(*self.both(prompt, a, b, spent))


def outcome(first: str | None, second: str | None) -> float | None:
    """``a``'s result from the answers with ``a`` as A (``first``) and as B (``second``): a response wins
    only when it wins both orders; a tie or a split verdict is 0.5; None when either stayed unreadable."""
    if first is None or second is None:
        return None
    a_votes = (first == "A") + (second == "B")
    b_votes = (first == "B") + (second == "A")
    return 1.0 if a_votes == 2 else 0.0 if b_votes == 2 else 0.5


LETTER = {0: "A", 1: "B", None: "tie"}  # a pick between (first, second) as a judge's answer
PICK = {1.0: 0, 0.0: 1, 0.5: None}  # the first response's outcome as the preferred index (None: a tie)


class LLMJudgeAnnotator(PairsOnly):
    """A pairwise LLM judge over an OpenAI-compatible API (:class:`HTTPPairwiseJudge`) as annotator.

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

    return Path(cfg.judge.cache) if cfg.judge.cache else cache_dir() / "judge-cache.jsonl"


def http_judge(cfg: Config) -> Any:
    """The pairwise HTTP judge of the config's ``judge`` section, which ``llm_judge``, ``bpo annotate`` and
    ``bpo eval --judge http`` share: its URL, model, key, template, sampling, retries and time-out, one cache."""
    j = cfg.judge
    return HTTPPairwiseJudge(
        j.url,
        j.model,
        judge_cache(cfg),
        os.environ.get(j.api_key_env),
        j.retries,
        timeout=j.timeout,
        template=read_template(j.template) if j.template else None,
        temperature=j.temperature,
        max_tokens=j.max_tokens,
    )


def _llm_judge(cfg: Config) -> Annotator:
    return LLMJudgeAnnotator(http_judge(cfg), cfg.judge.concurrency)


def check_judge(cfg: Config, who: str) -> None:
    """Refuse, before anything loads, a judge section that cannot be asked."""
    for key in ("url", "model"):
        if not getattr(cfg.judge, key):
            raise ConfigError(f"{who} needs judge.{key} (the OpenAI-compatible server's base URL and its model name)")
    if cfg.judge.template:
        read_template(cfg.judge.template)


register_annotator(
    "llm_judge",
    _llm_judge,
    help="an LLM behind an OpenAI-compatible API (the judge section: judge.url, judge.model), asked in both orders",
    per_response=False,
    model_key="judge.model",
    ledger_keys=("judge.url", "judge.model", "judge.template", "judge.temperature", "judge.max_tokens"),
    check=lambda cfg: check_judge(cfg, "annotator.kind=llm_judge"),
)
