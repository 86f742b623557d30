"""annotator.kind=llm_judge: a pairwise LLM judge over an OpenAI-compatible API trains the policy."""

import json
import os
import signal
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from conftest import tiny_config
from json_server import JSONHandler
from typer.testing import CliRunner

from bpo.cli import app
from bpo.config import load_config
from bpo.errors import Interrupted
from bpo.train.ledger import AnnotationLog
from bpo.train.loop import train

runner = CliRunner()


class Judge(JSONHandler):
    """Prefers the longer response; reports usage; counts requests and how many were in flight at once."""

    lock = threading.Lock()
    requests = in_flight = most_in_flight = 0
    kill_at: int | None = None  # SIGKILL ``victim`` when this request arrives (a kill with requests in flight)
    victim: int | None = None

    def do_POST(self):  # noqa: N802
        with Judge.lock:
            Judge.requests += 1
            if Judge.kill_at is not None and Judge.requests == Judge.kill_at and Judge.victim:
                os.kill(Judge.victim, signal.SIGKILL)
            Judge.in_flight += 1
            Judge.most_in_flight = max(Judge.most_in_flight, Judge.in_flight)
        time.sleep(0.02)  # long enough for concurrent requests to overlap
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"]
        a = text.split("### Response A\n")[1].split("\n\n### Response B")[0]
        b = text.split("### Response B\n")[1].rstrip("\n")
        usage = {"prompt_tokens": len(text), "completion_tokens": 1}
        payload = {"choices": [{"message": {"content": "A" if len(a) >= len(b) else "B"}}], "usage": usage}
        with Judge.lock:
            Judge.in_flight -= 1
        self.send_json(200, payload)


@pytest.fixture()
def judge_url():
    Judge.requests = Judge.in_flight = Judge.most_in_flight = 0
    Judge.kill_at = Judge.victim = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def overrides(tmp_path, url, **more):
    return tiny_config(
        tmp_path,
        **{
            "train.steps": 4,
            "train.phases": 2,
            "annotator.kind": "llm_judge",
            "judge.url": url,
            "judge.model": "judge-7b",
            "judge.concurrency": 2,
            **more,
        },
    )


def test_llm_judge_trains_logs_choices_and_cost_and_keeps_the_key_out(tmp_path, judge_url, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    res = runner.invoke(app, ["train", "quickstart", *overrides(tmp_path, judge_url), "--no-eval"])
    assert res.exit_code == 0, res.output
    ledger = tmp_path / "run" / "annotations.jsonl"
    entries = [e for e in AnnotationLog(ledger).entries if not e.identical]
    assert entries
    for e in entries:
        a, b = e.responses
        assert e.choice == (None if len(a) == len(b) else int(len(b) > len(a)))  # both orders must agree
        assert e.usage["requests"] == 2 and e.usage["completion_tokens"] == 2 and e.usage["prompt_tokens"] > 0
    assert Judge.requests == 2 * len(entries)
    assert 1 < Judge.most_in_flight <= 2  # concurrent, within judge.concurrency
    header = json.loads(ledger.read_text().splitlines()[0])["settings"]["annotator"]
    assert header["url"] == judge_url and header["model"] == "judge-7b"
    assert "sk-very-secret" not in ledger.read_text()


def test_a_resumed_or_repeated_run_pays_for_no_question_twice(tmp_path, judge_url):
    def stop(run, step, metrics):
        if step == 0:
            raise KeyboardInterrupt

    cfg = load_config("quickstart", overrides(tmp_path, judge_url))
    with pytest.raises(Interrupted):
        train(cfg, evaluate=False, on_step=stop)  # after phase 0 is judged and one step is taken
    asked_before_resume = Judge.requests
    assert asked_before_resume > 0
    train(cfg, resume=True, evaluate=False)
    judged = [e for e in AnnotationLog(tmp_path / "run" / "annotations.jsonl").entries if not e.identical]
    assert Judge.requests == 2 * len(judged)  # phase 0's questions were not asked again

    again = load_config("quickstart", overrides(tmp_path, judge_url, output_dir=str(tmp_path / "run2")))
    before = Judge.requests
    train(again, evaluate=False)  # same samples, same shared cache
    assert Judge.requests == before  # every answer came from the cache
    second = [e for e in AnnotationLog(tmp_path / "run2" / "annotations.jsonl").entries if not e.identical]
    assert [e.choice for e in second] == [e.choice for e in judged]
    assert all(e.usage == {} for e in second)  # nothing was paid for


def test_llm_judge_needs_a_url_before_anything_loads(tmp_path):
    res = runner.invoke(
        app, ["train", "quickstart", *tiny_config(tmp_path, **{"annotator.kind": "llm_judge"}), "--no-eval"]
    )
    assert res.exit_code == 2 and "needs judge.url" in res.output
    assert not (tmp_path / "run").exists()


def test_invalid_answers_and_ties_are_counted_apart():
    """An unreadable answer was recorded like a tie; now each non-choice says why, and two questions count two."""
    from bpo.annotators import LLMJudgeAnnotator
    from bpo.data import PromptRecord

    class Answers:  # what the judge answered in each order, per prompt
        name = "http:stub"
        said = {"p1": ("A", "B"), "p2": ("tie", "A"), "p3": (None, "A")}

        def both(self, prompt, a, b, spent):
            return self.said[prompt]

    got = LLMJudgeAnnotator(Answers(), 1).annotate([PromptRecord(p, p) for p in ("p1", "p2", "p3")], [("x", "y")] * 3)
    assert [(j.choice, j.unjudged, j.calls) for j in got] == [(0, None, 2), (None, "tie", 2), (None, "invalid", 2)]


@pytest.mark.slow
def test_a_kill_rebuys_at_most_the_requests_in_flight_and_every_request_is_counted(tmp_path, judge_url):
    """A killed llm_judge run re-bought ~4 requests a kill and its ledger recorded 124 and 100 of 132 and 136."""
    import subprocess
    import sys

    over = overrides(tmp_path, judge_url, **{"train.steps": 6, "train.phases": 1, "train.batch_size": 4})
    cmd = [sys.executable, "-m", "bpo.cli", "train", "quickstart", *over, "--no-eval"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    Judge.kill_at, Judge.victim = 7, None  # the judge kills the run as its 7th request arrives: some in flight
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    Judge.victim = proc.pid
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    Judge.kill_at = None
    res = subprocess.run([sys.executable, "-m", "bpo.cli", "train", "--resume", str(tmp_path / "run"), "--no-eval"],
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    judged = [e for e in AnnotationLog(tmp_path / "run" / "annotations.jsonl").entries if not e.identical]
    questions = 2 * len(judged)
    rebought = Judge.requests - questions
    assert 0 <= rebought <= 2  # judge.concurrency: only the requests in flight at the kill
    counted = json.loads((tmp_path / "run" / "run.json").read_text())["judge_requests"]
    assert Judge.requests <= counted <= Judge.requests + 2  # every request sent is counted (a kill may land
    # between counting one and sending it: at most the in-flight ones more)


class Recorder(JSONHandler):
    """Answers A; keeps the model, the prompt's first word and the key of every request."""

    seen: list[tuple[str, str, str]] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Recorder.seen.append((body["model"], body["messages"][0]["content"].split()[0], self.headers["Authorization"]))
        self.send_json(200, {"choices": [{"message": {"content": "A"}}], "usage": {}})


def test_one_judge_section_is_read_by_train_eval_and_annotate(tmp_path, monkeypatch):
    """The HTTP judge is set once, in the judge section of a config file; training, bpo annotate and
    bpo eval --judge http all ask that judge, with its model, template and key."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Recorder.seen = []
    template = tmp_path / "judge.txt"
    template.write_text("MARK Which reply to {prompt} is better?\nA: {a}\nB: {b}\nAnswer with one letter.")
    config = tmp_path / "judge.yaml"
    config.write_text(
        f"judge: {{url: 'http://127.0.0.1:{server.server_port}/v1', model: one-judge, template: '{template}', "
        f"api_key_env: MY_JUDGE_KEY, cache: '{tmp_path / 'cache.jsonl'}'}}\n"
    )
    monkeypatch.setenv("MY_JUDGE_KEY", "sekret")
    tiny = [o for o in tiny_config(tmp_path, **{"train.steps": 2, "train.phases": 1}) if not o.startswith("judge.")]
    asked = []
    res = runner.invoke(app, ["train", str(config), *tiny, "annotator.kind=llm_judge", "--no-eval"])
    assert res.exit_code == 0, res.output
    asked.append(len(Recorder.seen))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(3))
    )
    res = runner.invoke(app, ["annotate", "--pairs", str(pairs), "--out", str(tmp_path / "j.jsonl"), str(config),
                              "annotator.kind=llm_judge"])  # fmt: skip
    assert res.exit_code == 0, res.output
    asked.append(len(Recorder.seen))
    responses = tmp_path / "responses.txt"
    responses.write_text("".join(f"reply {i}\n" for i in range(4)))
    model = ["model.name=tiny-random-llama", "device=cpu", "data.eval_examples=4"]
    flags = ["--responses", str(responses), "--judge", "http", "--out", str(tmp_path / "ev")]
    res = runner.invoke(app, ["eval", str(config), *model, *flags])
    assert res.exit_code == 0, res.output
    asked.append(len(Recorder.seen))
    server.shutdown()
    assert 0 < asked[0] < asked[1] < asked[2]  # each command asked the judge
    assert set(Recorder.seen) == {("one-judge", "MARK", "Bearer sekret")}  # and each asked it as the section says
    header = AnnotationLog(tmp_path / "run" / "annotations.jsonl").header["settings"]["annotator"]
    assert (header["url"], header["model"]) == (f"http://127.0.0.1:{server.server_port}/v1", "one-judge")
    res = runner.invoke(app, ["config", "show", "annotator.url=http://x/v1"])
    assert res.exit_code == 2 and "annotator.url is gone; write judge.url='http://x/v1'" in res.output
