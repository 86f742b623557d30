"""bpo label: the label page in a real browser (Debian's chromium via Playwright), its token, concurrent
labellers, a killed server, and export/import. One tiny human-labelled run waiting at its phase is made
once and copied into each test."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from bpo.cli import app
from bpo.human.labels import LabelQueue, LabelStore
from bpo.train.ledger import AnnotationLog

runner = CliRunner()
CHROMIUM = os.environ.get("BPO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def waiting(tmp_path_factory) -> Path:
    """A one-phase human run (T=4, B=4) stopped at its phase, its pairs in RUN/labels."""
    tmp = tmp_path_factory.mktemp("human")
    over = tiny_config(tmp, **{"annotator.kind": "human", "train.phases": 1, "train.steps": 4})
    res = runner.invoke(app, ["train", *over, "--no-eval"])
    assert res.exit_code == 0 and "waiting for labels" in res.output, res.output
    return tmp


@pytest.fixture()
def run(waiting, tmp_path) -> Path:
    shutil.copytree(waiting, tmp_path / "copy")
    folder = tmp_path / "copy" / "run"
    cfg = (folder / "config.yaml").read_text().replace(str(waiting), str(tmp_path / "copy"))
    (folder / "config.yaml").write_text(cfg)
    return folder


class Server:
    """``bpo label RUN`` in its own process, on a free port."""

    def __init__(self, run: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.run, self.token = run, LabelQueue(run).token()
        cmd = [sys.executable, "-m", "bpo.cli", "label", str(run), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.proc.stdout.read()
                time.sleep(0.1)
        raise AssertionError("bpo label did not start")

    def url(self, path: str = "/", token: str | None = None, **query) -> str:
        q = "&".join(f"{k}={v}" for k, v in {"token": self.token if token is None else token, **query}.items())
        return f"http://127.0.0.1:{self.port}{path}?{q}"

    def call(self, path: str, body: dict | None = None, token: str | None = None, **query):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path, token, **query), data, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.communicate(timeout=20)[0]


def people_pairs(run: Path) -> dict[str, object]:
    return {i.id: i for i in LabelQueue(run).items() if not i.identical}


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (apt install chromium)")
def test_a_phase_labelled_in_the_browser_with_the_keyboard_trains_on_those_labels(run):
    from playwright.sync_api import sync_playwright

    items, expected, server = people_pairs(run), {}, Server(run)
    assert len(items) >= 4
    keys = ["1", "2", "t", "s"] + ["1", "2"] * len(items)  # a tie, a skip; the skipped pair comes back last
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(server.url(labeller="ana"))
            page.wait_for_selector("body[data-ready='1']")
            shown, pressed = [], 0
            while page.get_attribute("body", "data-pair"):
                pair = page.get_attribute("body", "data-pair")
                item = items[pair]
                flat = lambda text: " ".join(text.split())  # noqa: E731 - the page's text, whitespace aside
                assert flat(page.inner_text("#left-text")) == flat(item.responses[item.left])  # the recorded order
                assert flat(page.inner_text("#right-text")) == flat(item.responses[1 - item.left])
                key = keys[pressed]
                page.keyboard.press(key)
                page.wait_for_selector("body[data-ready='1']")
                pressed += 1
                if key != "s":
                    expected[pair] = {"1": item.left, "2": 1 - item.left, "t": None}[key]
                shown.append(pair)
                if pressed == 5:  # undo the last label: the same pair comes back, then label it again
                    page.keyboard.press("u")
                    page.wait_for_selector("body[data-ready='1']")
                    assert page.get_attribute("body", "data-pair") == pair
                    del expected[pair]
                if pressed == 3:  # reload mid-way: the labels given are kept, the next open pair shows
                    page.reload()
                    page.wait_for_selector("body[data-ready='1']")
                    assert page.get_attribute("body", "data-pair") not in expected
            assert page.is_visible("#done")
            assert f"{len(items)} of {len(items)} pairs labelled" in page.inner_text("#progress")
            browser.close()
    finally:
        server.stop()
    assert expected.keys() == items.keys()  # every pair once; the skipped one came back and was labelled

    res = runner.invoke(app, ["train", "--resume", str(run), "--no-eval"])
    assert res.exit_code == 0, res.output
    assert (run / "final" / "behavior").is_dir()
    people = {f"{e.phase}-{e.index}": e for e in AnnotationLog(run / "annotations.jsonl").entries if e.labels}
    assert {k: e.choice for k, e in people.items()} == expected  # in the sampled order: the orientation holds
    for k, e in people.items():
        assert [(x["labeller"], x["left"]) for x in e.labels] == [("ana", items[k].left)]


@pytest.mark.slow
def test_a_wrong_token_is_refused_and_a_killed_server_loses_nothing(run):
    server = Server(run)
    try:
        assert server.call("/api/next", token="wrong", labeller="ana")[0] == 403
        assert server.call("/", token="")[0] == 403
        status, got = server.call("/api/label", {"labeller": "ana", "id": "0-0", "key": "1"}, token="nope")
        assert status == 403 and not LabelStore(run).events
        given = []
        status, got = server.call("/api/next", labeller="ana")
        for _ in range(3):
            given.append(got["item"]["id"])
            status, got = server.call("/api/label", {"labeller": "ana", "id": given[-1], "key": "2"})
            assert status == 200
    finally:
        server.kill()  # SIGKILL: no shutdown, no flush
    store = LabelStore(run)
    assert [e.id for e in store.events] == given  # every acknowledged label is on disk
    server = Server(run)
    try:
        status, got = server.call("/api/next", labeller="ana")
        assert got["progress"]["labelled"] == 3 and got["item"]["id"] not in given
    finally:
        server.stop()


@pytest.mark.slow
def test_concurrent_labellers_neither_lose_nor_double_a_label(run):
    server, accepted = Server(run), {}
    pairs = people_pairs(run)

    def labeller(name: str) -> None:
        mine = accepted.setdefault(name, [])
        status, got = server.call("/api/next", labeller=name)
        while got["item"] is not None:
            status, answer = server.call("/api/label", {"labeller": name, "id": got["item"]["id"], "key": "1"})
            if status == 200:
                mine.append(got["item"]["id"])
                got = answer
            else:  # taken by someone else meanwhile: ask again
                assert status == 409, answer
                status, got = server.call("/api/next", labeller=name)

    try:
        threads = [threading.Thread(target=labeller, args=(f"p{k}",)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        server.stop()
    everyone = [pid for ids in accepted.values() for pid in ids]
    assert sorted(everyone) == sorted(pairs)  # each pair once
    store = LabelStore(run)
    assert sorted(e.id for e in store.events) == sorted(pairs)


def test_export_then_import_jsonl_and_label_studio(run, tmp_path):
    pairs = sorted(people_pairs(run).values(), key=lambda i: i.index)
    out = tmp_path / "pairs.jsonl"
    res = runner.invoke(app, ["label", str(run), "--export", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [i.id for i in pairs]
    tasks = json.loads(out.with_suffix(".labelstudio.json").read_text())
    assert tasks[0]["data"]["text1"] == pairs[0].responses[pairs[0].left]

    half = len(pairs) // 2
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"id": i.id, "choice": 1}) + "\n" for i in pairs[:half]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "9-99", "choice": 0}) + "\n")
    res = runner.invoke(app, ["label", str(run), "--import", str(bad)])
    assert res.exit_code == 2 and "9-99" in res.output and res.output.startswith("error:")
    assert runner.invoke(app, ["label", str(run), "--import", str(mine), "--labeller", "ana"]).exit_code == 0
    res = runner.invoke(app, ["label", str(run), "--import", str(mine), "--labeller", "ana"])
    assert res.exit_code == 2 and "already" in res.output and len(res.output.strip().splitlines()) == 1
    # Label Studio's export: the rest, one right (text2), one a tie, one cancelled and ignored
    studio = []
    for k, i in enumerate(pairs[half:]):
        result = [{"type": "pairwise", "value": {"selected": "right"}, "from_name": "pairwise", "to_name": "text1"}]
        if k == 1:
            result = [{"type": "choices", "value": {"choices": ["tie"]}, "from_name": "tie", "to_name": "prompt"}]
        anns = [{"completed_by": {"id": 7, "email": "bo@example.org"}, "result": result}]
        studio.append({"data": {"bpo_id": i.id}, "annotations": anns + [{"was_cancelled": True, "result": []}]})
    export = tmp_path / "export.json"
    export.write_text(json.dumps(studio))
    res = runner.invoke(app, ["label", str(run), "--import", str(export)])
    assert res.exit_code == 0, res.output
    store = LabelStore(run)
    got = {i.id: store.verdict(i, store.current()) for i in pairs}
    for k, i in enumerate(pairs):
        choice, labels = got[i.id]
        if k < half:
            assert (choice, labels[0].labeller) == (1, "ana")
        else:
            assert labels[0].labeller == "labelstudio:bo@example.org"
            assert choice == (None if k - half == 1 else 1 - i.left)
    res = runner.invoke(app, ["label", str(run), "--summary"])
    assert f"{len(pairs)} of {len(pairs)} pairs labelled" in res.output


@pytest.mark.slow
def test_a_busy_port_and_a_second_server_are_refused_in_one_line(run):
    server = Server(run)
    try:
        res = runner.invoke(app, ["label", str(run), "--port", str(server.port)])
        assert res.exit_code == 2 and res.output.startswith("error: cannot serve on 127.0.0.1")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        res = runner.invoke(app, ["label", str(run), "--port", str(free)])
        assert res.exit_code == 2 and "label queue" in res.output and "in use" in res.output
    finally:
        server.stop()


JUDGE = """
def score(record, response):
    return float(len(response) > 20)
"""


@pytest.mark.parametrize("review", ["disagreements", "all"])
def test_a_model_prelabels_and_people_review(tmp_path, review):
    judge = tmp_path / "judge.py"
    judge.write_text(JUDGE)
    over = tiny_config(
        tmp_path,
        **{
            "annotator.kind": "human",
            "annotator.prelabel": "callable",
            "annotator.callable": f"{judge}:score",
            "annotator.review": review,
            "train.phases": 1,
            "train.steps": 4,
        },
    )
    res = runner.invoke(app, ["train", *over, "--no-eval"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    items = [i for i in LabelQueue(run).items() if not i.identical]
    for i in items:
        tie = i.prelabel["scores"][0] == i.prelabel["scores"][1]
        assert i.review == (review == "all" or tie)
    store = LabelStore(run)
    while (item := store.next_item("ana")) is not None:
        store.add("ana", item.id, 0)
    if review == "all":
        assert any(r["raters"] == ["ana", "model (pre-label)"] for r in store.agreement())
    res = runner.invoke(app, ["train", "--resume", str(run), "--no-eval"])
    assert res.exit_code == 0, res.output
    ledger = {f"{e.phase}-{e.index}": e for e in AnnotationLog(run / "annotations.jsonl").entries}
    for i in items:
        e = ledger[i.id]
        assert e.choice == (0 if i.review else i.prelabel["choice"])
        assert bool(e.labels) == i.review and e.calls == 1 + i.review


@pytest.mark.slow
def test_a_huge_or_malformed_body_is_refused_not_read(run):
    """A 300 MB POST with a valid token was buffered whole (RSS 48 MB -> 479 MB); malformed, list or
    non-UTF-8 bodies were answered 500 with a traceback."""
    import http.client

    server = Server(run)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.putrequest("POST", server.url("/api/label").split(str(server.port), 1)[1])
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(300 * 2**20))
        conn.endheaders()  # the body is never sent: the answer must come without it
        reply = conn.getresponse()
        assert reply.status == 413 and "at most" in json.loads(reply.read())["error"]
        conn.close()
        for body in (b"{not json", b"[1, 2]", b"\xff\xfe{}"):
            req = urllib.request.Request(server.url("/api/label"), body, {"content-type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=10)
                raise AssertionError("accepted")
            except urllib.error.HTTPError as err:
                assert err.code == 400, (body, err.code)
    finally:
        output = server.stop()
    assert "Traceback" not in output
