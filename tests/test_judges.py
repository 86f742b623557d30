"""The HTTP judge against a local OpenAI-compatible server that injects each fault on demand."""

import json
import threading
import time
from http.server import HTTPServer

import pytest
from json_server import JSONHandler

from bpo.annotators.llm_judge import HTTPPairwiseJudge, JudgeError, parse_verdict


class Server(JSONHandler):
    """Prefers the longer response. ``faults`` is a queue: each request takes the next one, if any."""

    faults: list[str] = []
    requests = 0
    phrase = "{}"  # how the answer names the letter it picks ("I prefer a concise reply, so {}.")

    def do_POST(self):  # noqa: N802
        Server.requests += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fault = Server.faults.pop(0) if Server.faults else None
        if fault in ("503", "429"):
            return self.send_json(int(fault), b'{"error": "busy"}')
        if fault == "401":  # an error body that echoes what it was sent, key included
            return self.send_json(401, json.dumps({"error": "bad key", "headers": dict(self.headers)}).encode())
        if fault == "short":  # promises more bytes than it sends: IncompleteRead
            self.send_response(200)
            self.send_header("Content-Length", "500")
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            return
        if fault == "slow":  # answers, but only after the client's time-out
            time.sleep(1.5)
        if fault == "trickle":  # a valid answer, one byte every 0.1 s: each read is quick, the whole is not
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": "A"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            for byte in payload:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return
                time.sleep(0.1)
            return
        if fault == "html":
            return self.send_json(200, b"<html>gateway says hi</html>")
        if fault == "nochoices":
            return self.send_json(200, b'{"object": "error", "message": "overloaded"}')
        text = body["messages"][0]["content"]
        a = text.split("### Response A\n")[1].split("\n\n### Response B")[0]
        b = text.split("### Response B\n")[1].rstrip("\n")
        pick = Server.phrase.format("A" if len(a) >= len(b) else "B")
        answer = fault[len("say:") :] if fault and fault.startswith("say:") else pick
        self.send_json(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode())


@pytest.fixture()
def url():
    Server.faults, Server.requests, Server.phrase = [], 0, "{}"
    server = HTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def judge(url, tmp_path, **kw) -> HTTPPairwiseJudge:
    return HTTPPairwiseJudge(url, "fake", tmp_path / "cache.jsonl", backoff=0.001, **{"retries": 3, **kw})


# Answers as judges write them (prose, markdown, JSON, ties, refusals, both letters named), each
# with the reading a person would give it. The first three were read as A before the letters
# became case-sensitive: "a" the article is not "A" the response.
VERDICTS = [
    ("I prefer a concise reply, so B.", "B"),
    ("The answer is a clear B.", "B"),
    ("Answer: a tie", "tie"),
    ("A tie.", "tie"),
    ("It's a tie.", "tie"),
    ("Tie", "tie"),
    ("A clear win for B.", "B"),
    ("A concise reply wins: B", "B"),
    ("A", "A"),
    ("a", "A"),
    ("B.", "B"),
    ("(B)", "B"),
    ("[[A]]", "A"),
    ("Response A is better.", "A"),
    ("Response B is better than response A.", "B"),
    ("A is better than B.", "A"),
    ("B is clearly better; A rambles.", "B"),
    ("**B**", "B"),
    ("**Answer:** B", "B"),
    ("### Verdict\nB", "B"),
    ("The answer is B", "B"),
    ("Winner: A", "A"),
    ("While A is detailed, B is more accurate. Verdict: B", "B"),
    ('{"winner": "A"}', "A"),
    ('{"choice": "Response B"}', "B"),
    ('{"winner": "tie"}', "tie"),
    ('{"winner": "A", "reason": "B misses the point"}', "A"),
    ('```json\n{"verdict": "B"}\n```', "B"),
    ("I prefer response B because it is shorter.", "B"),
    ("B, since A misses the point", "B"),
    ("Both are equally good.", "tie"),
    ("A and B are equally helpful.", "tie"),
    ("Neither response is better.", "tie"),
    ("I cannot decide.", None),
    ("I'm sorry, but I can't help with comparing these.", None),
    ("Both A and B are fine", None),
    ("", None),
    ('{"reason": "no verdict given"}', None),
]


@pytest.mark.parametrize("text, want", VERDICTS)
def test_verdicts_parse(text, want):
    assert parse_verdict(text) == want


@pytest.mark.parametrize("fault", ["503", "429", "short", "html", "nochoices"])
def test_each_transient_fault_is_retried(url, tmp_path, fault):
    Server.faults = [fault, fault]
    j = judge(url, tmp_path)
    assert j.compare("p", "a longer answer", "short") == 1.0
    assert Server.requests == 4 and j.requests == 4  # two faults, then one answer per order


@pytest.mark.parametrize("fault, last", [("html", "JSONDecodeError"), ("503", "HTTP 503"), ("short", "IncompleteRead")])
def test_a_persistent_fault_ends_in_one_line_naming_the_judge(url, tmp_path, fault, last):
    Server.faults = [fault] * 10
    with pytest.raises(JudgeError) as err:
        judge(url, tmp_path, retries=2).compare("p", "a", "b")
    message = str(err.value)
    assert message.startswith(f"judge {url}/chat/completions failed after 3 tries (last: {last}")
    assert "\n" not in message and Server.requests == 3


def test_a_refusal_is_not_retried_and_its_body_is_not_echoed(url, tmp_path):
    Server.faults = ["401"]
    with pytest.raises(JudgeError, match=r"answered HTTP 401 Unauthorized; check the URL, model and API key") as err:
        judge(url, tmp_path, api_key="sk-secret-123").compare("p", "a", "b")
    assert "sk-secret" not in str(err.value) and "Authorization" not in str(err.value)
    assert Server.requests == 1


def test_an_unreadable_answer_is_asked_again_then_counted_invalid_never_cached(url, tmp_path):
    Server.faults = ["say:I cannot decide"] * 4  # every try of the first question (retries=3)
    j = judge(url, tmp_path)
    assert j.compare("p", "a longer answer", "short") is None
    assert j.invalid == 1 and Server.requests == 5  # 4 tries of the first order, 1 of the second
    cached = [json.loads(x) for x in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert len(cached) == 1  # only the readable answer (the second order)
    again = judge(url, tmp_path)
    assert again.compare("p", "a longer answer", "short") == 1.0 and again.requests == 1  # asks the missing one only


def test_the_cache_survives_a_torn_line_and_is_keyed_by_url(url, tmp_path):
    j = judge(url, tmp_path)
    assert j.compare("p", "a longer answer", "short") == 1.0
    with open(tmp_path / "cache.jsonl", "a") as f:
        f.write('{"key": "abc", "ans')  # a kill mid-append
    again = judge(url, tmp_path)
    assert again.compare("p", "a longer answer", "short") == 1.0 and again.requests == 0
    other = judge(url.replace("127.0.0.1", "localhost"), tmp_path)  # another endpoint: its own answers
    assert other.compare("p", "a longer answer", "short") == 1.0 and other.requests == 2
    # the next question is appended whole after the torn line is removed (it used to glue onto it,
    # and every later load of the cache failed)
    assert again.compare("q", "a longer answer", "short") == 1.0 and again.requests == 2
    third = judge(url, tmp_path)
    assert third.compare("q", "a longer answer", "short") == 1.0 and third.requests == 0


def test_timeout_and_retries_are_settings(url, tmp_path):
    """The configured time-out reaches the judge: a server slower than it is retried, then one line.

    (This test only parsed the config before.) Without the setting the default 60 s time-out would
    wait for the slow answers and the comparison would succeed.
    """
    from bpo.annotators import http_judge
    from bpo.config import load_config

    over = ["judge.timeout=0.2", "judge.retries=1", f"judge.cache={tmp_path}/c", f"judge.url={url}", "judge.model=fake"]
    cfg = load_config("quickstart", over)
    assert (cfg.judge.timeout, cfg.judge.retries) == (0.2, 1)
    Server.faults = ["slow"] * 2
    j = http_judge(cfg)
    j.backoff = 0.001
    with pytest.raises(JudgeError, match=r"failed after 2 tries \(last: (TimeoutError|URLError).*timed out"):
        j.compare("p", "a longer answer", "short")
    assert j.requests == 2


def test_the_cache_key_holds_everything_that_shapes_the_answer(url, tmp_path):
    assert judge(url, tmp_path).compare("p", "a longer answer", "short") == 1.0 and Server.requests == 2
    same = judge(url, tmp_path)
    assert same.compare("p", "a longer answer", "short") == 1.0 and same.requests == 0
    for other in (
        {"template": "Pick A or B.\n\n### Request\n{prompt}\n\n### Response A\n{a}\n\n### Response B\n{b}\n"},
        {"temperature": 0.7},
        {"max_tokens": 64},
    ):
        changed = judge(url, tmp_path, **other)
        assert changed.compare("p", "a longer answer", "short") == 1.0
        assert changed.requests == 2, f"{other}: answers to another question were reused"


def test_cached_answers_are_read_again_from_their_raw_text(url, tmp_path):
    j = judge(url, tmp_path)
    key_ab, key_ba = j._key("p", "x", "yy"), j._key("p", "yy", "x")
    rows = [  # what an earlier parser read as A, though the text names B; the other order says A
        {"key": key_ab, "text": "I prefer a concise reply, so B.", "answer": "A"},
        {"key": key_ba, "text": "Response A is better.", "answer": "A"},
    ]
    (tmp_path / "cache.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = judge(url, tmp_path)
    assert again.compare("p", "x", "yy") == 0.0 and again.requests == 0  # yy wins both orders, nothing asked


def test_a_tie_answer_is_a_tie_and_is_cached(url, tmp_path):
    Server.phrase = "Answer: a tie"
    j = judge(url, tmp_path)
    assert j.compare("p", "a longer answer", "short") == 0.5 and j.invalid == 0
    assert [json.loads(x)["answer"] for x in (tmp_path / "cache.jsonl").read_text().splitlines()] == ["tie", "tie"]


def test_a_judge_trickling_its_answer_is_cut_at_the_deadline(url, tmp_path):
    """judge.timeout bounded each socket read, not the request: a trickling judge took 147 s for 2
    requests at a 2 s time-out."""
    Server.faults = ["trickle"] * 2  # each answer would take ~6 s; the deadline is 0.5 s a request
    j = judge(url, tmp_path, retries=1, timeout=0.5)
    with pytest.raises(JudgeError, match=r"failed after 2 tries \(last: TimeoutError"):
        j.compare("p", "a longer answer", "short")
