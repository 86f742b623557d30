"""A pairwise LLM judge behind any OpenAI-compatible ``/chat/completions`` endpoint.

Each pair is asked in both orders (A/B, then B/A) to cancel position bias: a response wins only
when the judge prefers it both times; a split verdict is a tie. Every answer is a paid call, so
answers are appended (fsync'd) to a cache keyed by (URL, model, prompt, first, second) and a rerun
asks nothing it asked before; a cache line cut by a kill is dropped, not fatal.

Faults: connection errors, time-outs, HTTP 429 and 5xx, a body cut short, a 200 that is not JSON
or has no ``choices`` are retried with exponential backoff and end in one line naming the URL. An
answer that names no response is asked again and, if it stays unreadable, counted as invalid
(reported apart), never cached and never taken for a tie. Error bodies are not echoed: they can
carry request headers or keys.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bpo.errors import BpoError
from bpo.io import append_lines, read_jsonl


class JudgeError(BpoError, RuntimeError):
    """The judge could not be asked; the message names its URL and the last problem."""


TRANSIENT = (
    urllib.error.URLError,
    TimeoutError,
    ConnectionError,
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine
    json.JSONDecodeError,
    UnicodeDecodeError,
    KeyError,
    IndexError,
    TypeError,
)

_PATTERNS = [
    re.compile(r"^\(?([AB])\)?[\s.:!)]*$"),  # "A", "(B)", "B."
    re.compile(r"\b(?:response|answer|output|option|assistant)\s*\(?([AB])\)?\s+is\s+(?:better|preferred)", re.I),
    re.compile(r"\b(?:answer|winner|verdict|choice|preference)\s*(?:is|:)\s*(?:response\s*)?\(?([AB])\)?\b", re.I),
    re.compile(r"\b(?:prefer|choose|pick|select)\s+(?:response\s*)?\(?([AB])\)?\b", re.I),
    re.compile(r"^(?:response\s*)?\(?([AB])\)?\b"),  # starts with the letter: "B, because ..."
]


def parse_verdict(text: str) -> str | None:
    """ "A" or "B" from a judge's answer, or None when it names neither (or both)."""
    text = text.strip()
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        obj = None
    if isinstance(obj, dict):
        for key in ("winner", "choice", "answer", "preferred", "verdict", "better"):
            if isinstance(obj.get(key), str):
                return parse_verdict(obj[key])
        return None
    plain = re.sub(r"[*_`#\"']", "", text).strip()
    for pattern in _PATTERNS:
        found = {m.upper() for m in pattern.findall(plain)}
        if len(found) == 1:
            return found.pop()
    standalone = set(re.findall(r"\b([AB])\b", plain))
    return standalone.pop() if len(standalone) == 1 else None


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
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.cache_path = Path(cache)
        self.cache: dict[str, str] = {row["key"]: row["answer"] for row in read_jsonl(self.cache_path)}
        self.name = f"http:{model}"
        self.requests = 0  # HTTP requests made by this instance (cache hits excluded, retries included)
        self.invalid = 0  # questions whose answers stayed unreadable
        self._lock = threading.Lock()  # annotators ask from several threads: one cache line, one count at a time

    def _key(self, prompt: str, first: str, second: str) -> str:
        return hashlib.sha256(json.dumps([self.url, self.model, prompt, first, second]).encode()).hexdigest()

    def _post(self, body: bytes, spent: dict[str, int]) -> str:
        """The answer text of one request, retrying transient faults; a JudgeError when they persist.

        ``spent`` counts what was paid for: requests (retries included) and the tokens the server reports.
        """
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            with self._lock:
                self.requests += 1
            spent["requests"] = spent.get("requests", 0) + 1
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
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
        """The judge's pick between ``first`` (A) and ``second`` (B); None when its answer stays unreadable."""
        spent = {} if spent is None else spent
        key = self._key(prompt, first, second)
        if key in self.cache:
            return self.cache[key]
        body = json.dumps(
            {
                "model": self.model,
                "temperature": 0,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": self.TEMPLATE.format(prompt=prompt, a=first, b=second)}],
            }
        ).encode()
        for _ in range(self.retries + 1):
            answer = parse_verdict(self._post(body, spent))
            if answer is not None:
                with self._lock:
                    self.cache[key] = answer
                    self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                    append_lines(self.cache_path, [json.dumps({"key": key, "answer": answer})])
                return answer
        with self._lock:
            self.invalid += 1
        return None

    def compare(self, prompt: str, a: str, b: str, spent: dict[str, int] | None = None) -> float | None:
        """1 when ``a`` wins in both orders, 0 when ``b`` does, 0.5 otherwise; None if an answer was unreadable."""
        first = self.ask(prompt, a, b, spent)  # a is A
        second = self.ask(prompt, b, a, spent)  # a is B
        if first is None or second is None:
            return None
        a_votes = (first == "A") + (second == "B")
        b_votes = (first == "B") + (second == "A")
        return 1.0 if a_votes == 2 else 0.0 if b_votes == 2 else 0.5
