"""bpo eval (every judge, external files) and bpo compare (grid, resume) on tiny models."""

import json
import shlex
import threading
from http.server import HTTPServer
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from test_judges import Server
from typer.testing import CliRunner

from bpo.annotators.llm_judge import HTTPPairwiseJudge
from bpo.cli import app
from bpo.config import load_config
from bpo.eval.systems import read_responses, run_eval
from bpo.tasks.quickstart import QuickstartTask, judge

runner = CliRunner()


@pytest.fixture()
def judge_url():
    """The fault-injecting judge of test_judges (prefers the longer response), failing its first call."""
    Server.faults, Server.requests, Server.phrase = ["503"], 0, "{}"
    server = HTTPServer(("127.0.0.1", 0), Server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_http_judge_both_orders_retries_and_cache(tmp_path, judge_url):
    j = HTTPPairwiseJudge(judge_url, "fake", tmp_path / "cache.jsonl", backoff=0.01)
    assert j.compare("p", "a longer answer", "short") == 1.0
    assert j.compare("p", "short", "a longer answer") == 0.0
    assert j.compare("p", "same", "size") == 0.5  # the judge always says A on ties: both orders cancel it
    # 4 distinct questions (the swapped pair reuses the first pair's two answers) + the retried 503
    assert Server.requests == 5
    again = HTTPPairwiseJudge(judge_url, "fake", tmp_path / "cache.jsonl")
    assert again.compare("p", "a longer answer", "short") == 1.0 and again.requests == 0


def test_http_judge_unreachable_is_a_clear_error(tmp_path):
    j = HTTPPairwiseJudge("http://127.0.0.1:9/v1", "fake", tmp_path / "c.jsonl", retries=1, backoff=0.01)
    with pytest.raises(RuntimeError, match=r"judge http://127.0.0.1:9/v1/chat/completions failed after 2 tries"):
        j.compare("p", "a", "b")


def test_read_responses_checks_alignment(tmp_path):
    from bpo.data import PromptRecord

    recs = [PromptRecord("p1", "one?"), PromptRecord("p2", "two?")]
    f = tmp_path / "r.jsonl"
    f.write_text('{"response": "x"}\n{"responses": ["y", "z"]}\n')
    assert read_responses(f, recs) == ["x", "y"]
    with pytest.raises(ValueError, match="2 responses for 3 prompts; without ids they are matched by position"):
        read_responses(f, recs + [PromptRecord("p3", "three?")])
    f.write_text('{"response": "x"}\n{"text": "y"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: field 'response'"):
        read_responses(f, recs)
    g = tmp_path / "r.txt"
    g.write_text("one\ntwo\n")
    assert read_responses(g, recs) == ["one", "two"]


RECS = [("p1", "one?"), ("p2", "two?"), ("p3", "three?")]
ROWS = {  # file name -> the rows written, one JSON object per line
    "r.jsonl": [("p3", "c"), ("p1", "a"), ("p2", "b")],
    "unknown.jsonl": [("p1", "a"), ("p9", "b"), ("p2", "c")],
    "missing.jsonl": [("p1", "a"), ("p2", "b")],
    "twice.jsonl": [("p1", "a"), ("p1", "b"), ("p2", "c")],
    "some.jsonl": [("p1", "a"), (None, "b"), ("p2", "c")],
    "lines.json": [("p1", "a"), ("p2", "b"), ("p3", "c")],
}


@pytest.mark.parametrize(
    "name, refused",
    [
        ("r.jsonl", None),
        ("unknown.jsonl", r"unknown\.jsonl:2: id 'p9' is not one of the 3 eval prompts"),
        ("missing.jsonl", r"no response for prompt id 'p3'"),
        ("twice.jsonl", r"twice\.jsonl:2: id 'p1' appears twice"),
        ("some.jsonl", r"some\.jsonl:2: this row has no id while others have one"),
        ("lines.json", r"lines\.json: a \.json responses file must be one JSON array"),
    ],
)
def test_responses_with_ids_are_matched_by_id(tmp_path, name, refused):
    """A file in another order was judged against the wrong prompts; a JSONL file named .json was read as text."""
    from bpo.data import PromptRecord

    recs = [PromptRecord(*r) for r in RECS]
    f = tmp_path / name
    rows = [{"response": text} if rid is None else {"id": rid, "response": text} for rid, text in ROWS[name]]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if refused is None:
        assert read_responses(f, recs) == ["a", "b", "c"]
    else:
        with pytest.raises(ValueError, match=refused):
            read_responses(f, recs)


def test_a_json_responses_file_is_an_array(tmp_path):
    from bpo.data import PromptRecord

    recs = [PromptRecord(*r) for r in RECS]
    j = tmp_path / "r.json"
    j.write_text(
        json.dumps([{"id": "p2", "response": "b"}, {"id": "p1", "response": "a"}, {"id": "p3", "response": "c"}])
    )
    assert read_responses(j, recs) == ["a", "b", "c"]
    j.write_text(json.dumps(["a", "b", "c"]))
    assert read_responses(j, recs) == ["a", "b", "c"]
    j.write_text(json.dumps({"responses": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match=r"must be a JSON array, not a dict"):
        read_responses(j, recs)


def quick_cfg(tmp_path, **over):
    return load_config(None, tiny_config(tmp_path, **{"data.eval_examples": 6, "eval.max_new_tokens": 8, **over}))


def test_eval_external_files_with_the_task_judge(tmp_path):
    cfg = quick_cfg(tmp_path)
    from bpo.data import load_source

    records = load_source(cfg.data, "eval", 6, None)
    good = tmp_path / "good.txt"
    good.write_text("\n".join(r.reference for r in records))  # the references themselves: all ties
    r = run_eval(cfg, tmp_path / "e1", responses=str(good), against="reference")
    assert (r["ties"], r["n"], r["win_rate"], r["win_rate_ties_half"]) == (6, 6, 0.0, 0.5)
    assert r["warnings"] == [
        "warning: the win rate vs reference rests mostly on ties (6 of 6 prompts): it says little about which "
        "system is better"
    ]
    assert r["judge"] == "quickstart-judge"
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join("Nobody did anything." for _ in records))
    r = run_eval(cfg, tmp_path / "e2", responses=str(good), against=str(bad))
    assert r["win_rate"] == 1.0 and r["ci_low"] == 1.0
    saved = json.loads((tmp_path / "e2" / "eval.json").read_text())
    assert {"win_rate", "ci_low", "ci_high", "ties", "n", "judge", "config"} <= saved.keys()
    assert len((tmp_path / "e2" / "items.jsonl").read_text().splitlines()) == 6


def test_eval_cli_adapter_vs_base_with_http_judge(tmp_path, judge_url):
    over = tiny_config(tmp_path, **{"data.eval_examples": 4, "eval.max_new_tokens": 8, "data.sft_examples": 4})
    assert runner.invoke(app, ["sft", "quickstart", *over]).exit_code == 0
    adapter = tmp_path / "sft" / "member0"
    res = runner.invoke(
        app,
        [
            "eval",
            "quickstart",
            *over,
            "--out",
            str(tmp_path / "ev"),
            "--adapter",
            str(adapter),
            "--against",
            "base",
            "--judge",
            "http",
            "--judge-url",
            judge_url,
            "--judge-model",
            "fake",
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert r["n"] == 4 and r["judge"] == "http:fake" and r["wins"] + r["ties"] + r["losses"] == 4


@pytest.mark.parametrize(
    "phrase, want, read",
    [
        ("I prefer a concise reply, so {}.", (6, 0, 0), {"A", "B"}),
        ("The answer is a clear {}.", (6, 0, 0), {"A", "B"}),
        ("I prefer a concise reply, so B.", (0, 6, 0), {"B"}),  # B in both orders: a split verdict
        ("Answer: a tie", (0, 6, 0), {"tie"}),
    ],
)
def test_bpo_eval_http_reads_the_judges_prose(tmp_path, judge_url, phrase, want, read):
    """The judge (picking the longer response, or always saying one thing) answers in prose: 'a' the
    article is not response A, 'a tie' is a tie. ``read``: what the cache says each answer named."""
    Server.phrase = phrase
    over = tiny_config(tmp_path, **{"data.eval_examples": 6})
    mine, other = tmp_path / "mine.txt", tmp_path / "other.txt"
    mine.write_text("\n".join(f"a long and careful answer number {i}" for i in range(6)))
    other.write_text("\n".join("short" for _ in range(6)))
    args = ["eval", "quickstart", *over, "--out", str(tmp_path / "ev"), "--responses", str(mine)]
    args += ["--against", str(other), "--judge", "http", "--judge-url", judge_url, "--judge-model", "fake"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "judge http:fake: both orders 0/6 (starting)" in res.output  # a long judging speaks
    r = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert (r["wins"], r["ties"], r["losses"]) == want and r["invalid"] == 0
    cached = [json.loads(x) for x in (tmp_path / "judge-cache.jsonl").read_text().splitlines()]
    assert len(cached) == 12 and {c["answer"] for c in cached} == read and all(c["text"] for c in cached)


def test_eval_with_a_reward_model(tmp_path):
    from test_annotators import make_tiny_rm

    rm = make_tiny_rm(tmp_path)
    cfg = quick_cfg(tmp_path, **{"annotator.kind": "reward_model", "annotator.model": str(rm), "device": "cpu"})
    responses = tmp_path / "r.txt"
    responses.write_text("\n".join(f"answer number {i}" for i in range(6)))
    r = run_eval(cfg, tmp_path / "ev", responses=str(responses), against="reference")
    assert r["n"] == 6 and r["judge"] == f"rm:{rm}"
    for row in map(json.loads, (tmp_path / "ev" / "items.jsonl").read_text().splitlines()):
        expected = 1.0 if row["score"] > row["against_score"] else 0.0 if row["score"] < row["against_score"] else 0.5
        assert row["outcome"] == expected


def test_every_compare_method_is_a_valid_config_at_equal_budget():
    from bpo.eval.compare import METHODS

    for method, (_, overrides) in METHODS.items():
        cfg = load_config("quickstart", [o.replace("{T/4}", "4").replace("{T}", "16") for o in overrides])
        assert cfg.train.steps * cfg.train.batch_size == 128, method  # the budget is the preset's
        k = {"k1": 1, "k5": 5}.get(method.rsplit("-", 1)[-1], 2)
        assert len(cfg.sft.seeds) == k, method


def test_methods_of_another_ensemble_size_get_their_own_sft_cache(tmp_path):
    """`claims.sh ensemble` stopped at its first run: bpo-f2-k1 was given the grid's K = 2 SFT cache and refused it."""
    from bpo.eval.compare import train_args

    def cache(method):
        args = train_args("quickstart", [], method, 0, tmp_path, 16)
        cfg = load_config(args[0], args[1:])
        return Path(cfg.sft_dir), len(cfg.sft.seeds)

    shared = {cache(m) for m in ("offline-dpo", "online-dpo-sft", "bpo-f2", "bpo-fT", "tr-dpo-soft", "simpo")}
    assert shared == {(tmp_path / "sft", 2)}  # the grid's own setting: one cache, as the existing grids have it
    k1, k5 = cache("bpo-f2-k1"), cache("bpo-f2-k5")
    assert k1[1] == 1 and k5[1] == 5 and len({k1[0], k5[0], tmp_path / "sft"}) == 3
    assert cache("bpo-fT-k1") == k1 and cache("bpo-fT-k5") == k5  # the same SFT setting shares its cache


@pytest.mark.slow
def test_compare_two_methods_then_resume(tmp_path):
    over = tiny_config(tmp_path, **{"train.steps": 2, "data.eval_examples": 4, "eval.max_new_tokens": 6})
    over = [o for o in over if not o.startswith(("output_dir", "sft_dir"))]
    out = tmp_path / "grid"
    args = ["compare", "quickstart", *over, "--out", str(out), "--methods", "offline-dpo,bpo-fT", "--seeds", "0"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert "| offline-dpo | 1 |" in report and "| bpo-fT | 1 |" in report
    head_to_head = report.split("## Against offline DPO")[1].split("\n## ")[0]
    assert "| bpo-fT | 1 |" in head_to_head and "offline-dpo | 1 |" not in head_to_head
    assert "| start (SFT) | - |" in report and report.count("| bpo-fT | 1 |") == 4
    from bpo import code_version  # each result says the code it was made with

    code = json.loads((out / "bpo-fT" / "seed0" / "run.json").read_text())["code"]
    assert code == code_version() and f"Code of the runs (`run.json`): {code} (2 runs)." in report
    threads = torch.get_num_threads()  # CPU results differ in the last digits with the thread count
    assert json.loads((out / "bpo-fT" / "seed0" / "run.json").read_text())["torch_threads"] == threads
    assert f"Torch threads of the runs: {threads} (2 runs)." in report
    assert (out / "win_rate.png").stat().st_size > 1000 and (out / "curves.png").exists()
    assert "the thin lines of its colour each seed" in report
    # every eval item keeps the responses that were judged, and their scores are the judge's
    task = QuickstartTask(0)
    for row in map(json.loads, (out / "bpo-fT" / "seed0" / "eval_items.jsonl").read_text().splitlines()):
        for who in ("start", "trained"):
            assert row[who] == judge(task.post(row["id"]), row[f"{who}_response"])
    cfg = load_config(out / "bpo-fT" / "seed0" / "config.yaml")
    assert cfg.train.phases == 2 == cfg.train.steps and cfg.train.reference == "behavior"
    assert load_config(out / "offline-dpo" / "seed0" / "config.yaml").train.phases == 1
    stamp = (out / "offline-dpo" / "seed0" / "eval.json").stat().st_mtime_ns
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and res.output.count("done, skipped") == 2
    assert (out / "offline-dpo" / "seed0" / "eval.json").stat().st_mtime_ns == stamp
    assert (
        "The start model (the SFT ensemble's greedy responses) beats the human reference on: the judge"
        in (out / "report.md").read_text()
    )
    drift = (out / "report.md").read_text().split("## Drift from the start")[1].split("##")[0]
    row = next(x for x in drift.splitlines() if x.startswith("| bpo-fT | 1 |")).split(" | ")
    gain = [json.loads(x) for x in (out / "bpo-fT" / "seed0" / "eval_items.jsonl").read_text().splitlines()]
    gain = sum(r["trained"] - r["start"] for r in gain) / len(gain)
    last = json.loads((out / "bpo-fT" / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])
    kls = [f"{last['kl/behavior_to_sft']:.2f}", f"{last['kl/behavior']:.2f} |"]
    assert row[2:6] == [f"{gain:+.2f}", f"{int(gain < 0)} of 1", *kls]

    # published: the raw files alone rebuild the same tables
    pub = tmp_path / "pub"
    claim = ["--claims", "bpo-fT>offline-dpo"]
    res = runner.invoke(app, [*args, "--report-only", "--publish", str(pub), *claim])
    assert res.exit_code == 0, res.output
    assert "| bpo-fT beats offline-dpo | 1 |" in (pub / "report.md").read_text()
    assert "not settled at 1 seed (no interval)" in (pub / "report.md").read_text()
    tables = lambda text: [x for x in text.splitlines() if x.startswith("|")]  # noqa: E731
    want = tables((out / "report.md").read_text())
    assert want and tables((pub / "report.md").read_text()) == want
    assert "--report-only --out" in (pub / "report.md").read_text()
    # the command the page names rebuilds the same page: it still names the command that ran the grid
    published = (pub / "report.md").read_text()
    again = published.split("Rebuilt from the raw files beside this report (`*/seed*/`) with: `bpo ")[1].split("`")[0]
    res = runner.invoke(app, shlex.split(again))
    assert res.exit_code == 0, res.output
    assert (pub / "report.md").read_text() == published
    from bpo.train.ledger import AnnotationLog

    ledger = AnnotationLog(out / "bpo-fT" / "seed0" / "annotations.jsonl")
    summary = json.loads((pub / "bpo-fT" / "seed0" / "ledger-summary.json").read_text())
    assert summary["outcomes"] == ledger.outcomes() and summary["calls"] == ledger.calls
    assert [p["judged"] for p in summary["phases"]] == [
        ledger.outcomes(ledger.phase(k).values())["judged"] for k in (0, 1)
    ]
    raw = [f for f in pub.rglob("*") if f.is_file() and f.suffix != ".png"]
    assert {f.name for f in raw} >= {"metrics.jsonl.gz", "eval_items.jsonl.gz", "config.yaml", "eval.json"}
    assert sum(f.stat().st_size for f in raw) < 100_000  # small enough to commit
    import shutil

    shutil.move(out, tmp_path / "gone")  # the run folders out of reach
    again = ["compare", "quickstart", "--report-only", "--out", str(pub), "--methods", "offline-dpo,bpo-fT"]
    res = runner.invoke(app, [*again, "--seeds", "0", *claim])
    assert res.exit_code == 0, res.output
    assert tables((pub / "report.md").read_text()) == want
    # the rebuilt report names the command that ran the grid and the one that rebuilt it, never one that would
    # train into the published folder
    rebuilt = (pub / "report.md").read_text()
    assert f"Command: `bpo compare quickstart {' '.join(over)} --out {out} --methods offline-dpo,bpo-fT" in rebuilt
    assert f"with: `bpo compare quickstart --report-only --out {pub} " in rebuilt
    assert f"`bpo compare quickstart --out {pub}" not in rebuilt
    shutil.move(tmp_path / "gone", out)
    # a seed published by an earlier call (here a copy named seed1) joins the report of a later one
    for m in ("offline-dpo", "bpo-fT"):
        shutil.copytree(pub / m / "seed0", pub / m / "seed1")
    res = runner.invoke(app, [*args, "--report-only", "--publish", str(pub), *claim])
    assert res.exit_code == 0, res.output
    joined = (pub / "report.md").read_text()
    rebuild = joined.split("with: `")[1].split("`")[0]
    words = list(shlex.shlex(rebuild, posix=True, punctuation_chars=True))  # as a shell splits it: > redirects
    assert "| bpo-fT | 2 |" in joined and "--seeds 0,1 --claims" in rebuild
    assert words[-2:] == ["--claims", "bpo-fT>offline-dpo"]
    bad = runner.invoke(app, [*args, "--claims", "simpo>offline-dpo"])
    assert bad.exit_code == 2 and "error: claim 'simpo>offline-dpo': simpo is not a method of this grid" in bad.output
    only = runner.invoke(app, [*args[:-4], "--methods", "bpo-fT", "--seeds", "0", "--report-only"])
    assert only.exit_code == 0, only.output
    report = (out / "report.md").read_text()
    assert "| bpo-fT | 1 |" in report and "offline-dpo |" not in report and "Against offline DPO" not in report


def test_references_are_scored_once_per_judge(tmp_path, monkeypatch):
    """Each bpo eval --responses of 500 prompts rescored the 500 references (6-8 min on a CPU)."""
    from test_annotators import make_tiny_rm

    from bpo.annotators.reward_model import RewardModel

    monkeypatch.setenv("BPO_CACHE", str(tmp_path / "cache"))
    scored = []
    original = RewardModel.scores
    monkeypatch.setattr(RewardModel, "scores", lambda self, p, r: scored.append(len(r)) or original(self, p, r))
    rm = make_tiny_rm(tmp_path)
    cfg = quick_cfg(tmp_path, **{"annotator.kind": "reward_model", "annotator.model": str(rm), "device": "cpu"})
    responses = tmp_path / "r.txt"
    responses.write_text("\n".join(f"answer number {i}" for i in range(6)))
    first = run_eval(cfg, tmp_path / "e1", responses=str(responses), against="reference")
    assert scored == [6, 6]
    again = run_eval(cfg, tmp_path / "e2", responses=str(responses), against="reference")
    assert scored == [6, 6, 6]  # the references' scores came from the cache
    assert {k: v for k, v in again.items() if k != "system"} == {k: v for k, v in first.items() if k != "system"}
    (rm / "rm.json").write_text("{}")  # the judge's folder changed: its scores are not reused
    run_eval(cfg, tmp_path / "e3", responses=str(responses), against="reference")
    assert scored == [6, 6, 6, 6, 6]


def test_a_count_mismatch_says_what_the_length_filter_dropped(tmp_path):
    """On a count mismatch the error did not say that data.max_prompt_tokens dropped prompts, nor which."""
    data = tmp_path / "p.jsonl"
    rows = [{"prompt": "short?", "label": "a"}, {"prompt": "y" * 3000, "label": "b"}, {"prompt": "ok?", "label": "c"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = tmp_path / "j.py"
    judge.write_text("def score(record, response):\n    return float(len(response))\n")
    cfg = quick_cfg(
        tmp_path, **{"data.eval": str(data), "annotator.kind": "callable", "annotator.callable": f"{judge}:score"}
    )
    responses = tmp_path / "r.txt"
    responses.write_text("one\ntwo\nthree\n")
    with pytest.raises(ValueError) as err:
        run_eval(cfg, tmp_path / "e", responses=str(responses), against="reference")
    said = str(err.value)
    assert "3 responses for 2 prompts" in said and "dropped 1 of 3 records whose prompt is over" in said
    assert "(first: p-2)" in said and "a larger data.max_prompt_tokens keeps them" in said


def test_the_report_says_how_closely_annotator_and_judge_agree():
    import numpy as np

    from bpo.eval.grid_report import _judges_agree

    rng = np.random.default_rng(0)
    gold = {x: rng.normal(size=64) for x in ("start", "trained", "reference")}
    rows = [{"id": f"p{i}", "start_response": f"s{i}", "trained_response": f"t{i}"} for i in range(64)]
    same = {**gold, **{f"annotator_{x}": 2 * v + 1 for x, v in gold.items()}}  # one judge twice
    other = {**gold, **{f"annotator_{x}": rng.normal(size=64) for x in gold}}
    line = _judges_agree({"bpo-f2": [{"items": same, "rows": rows}]})[1]
    assert "same 192 distinct eval responses" in line and "r = 1.00 [1.00, 1.00]" in line
    r = float(_judges_agree({"bpo-f2": [{"items": other, "rows": rows}]})[1].split("r = ")[1].split()[0])
    assert abs(r) < 0.2
    assert _judges_agree({"bpo-f2": [{"items": gold, "rows": rows}]}) == []  # no annotator scores: nothing to say
    # a second run with the same start responses and references adds only its trained responses
    again = [{"id": f"p{i}", "start_response": f"s{i}", "trained_response": f"u{i}"} for i in range(64)]
    two = {"bpo-f2": [{"items": same, "rows": rows}], "bpo-fT": [{"items": same, "rows": again}]}
    assert "same 256 distinct eval responses" in _judges_agree(two)[1]


@pytest.mark.slow
def test_a_grid_publishes_each_run_as_it_finishes(tmp_path):
    """A grid stopped before its last run (here the second run fails) has published the runs it finished."""
    over = tiny_config(tmp_path, **{"train.steps": 2, "data.eval_examples": 4, "eval.max_new_tokens": 6})
    over = [o for o in over if not o.startswith(("output_dir", "sft_dir"))]
    out, pub = tmp_path / "grid", tmp_path / "pub"
    (out / "bpo-fT").mkdir(parents=True)
    (out / "bpo-fT" / "seed0").write_text("in the way")  # the second run cannot make its folder
    args = ["compare", "quickstart", *over, "--out", str(out), "--methods", "offline-dpo,bpo-fT", "--seeds", "0"]
    res = runner.invoke(app, [*args, "--publish", str(pub)])
    assert res.exit_code == 2 and "bpo-fT seed 0 failed" in res.output
    assert (pub / "offline-dpo" / "seed0" / "eval.json").exists()
    assert "| offline-dpo | 1 |" in (pub / "report.md").read_text()


def test_the_drift_table_prints_no_negative_zero():
    """At F = 1 the behavior model is the SFT: its KL to the SFT is 0 up to float noise of either sign, and a
    reader should not meet "-0.00" for a divergence."""
    import numpy as np

    from bpo.eval.grid_report import _drift

    run = {"metrics": [{"kl/behavior_to_sft": -3e-7, "kl/behavior": 8.6349}], "items": {"trained": np.ones(2)}}
    run["items"]["start"] = np.array([0.5, 1.5])
    row = _drift({"offline-dpo": [run]})[2].split(" | ")
    assert row[4:] == ["0.00", "8.63 |"], row


def test_the_drift_table_reads_the_last_step_that_measured_a_kl():
    """A last step whose sampled pairs were all identical or tied trains on nothing and measures no KL; the
    table then shows the latest step that did (marked with its step), not "n/a" for the whole run."""
    import numpy as np

    from bpo.eval.grid_report import _drift

    metrics = [{"step": 15, "kl/behavior_to_sft": 5.644, "kl/behavior": 1.351}, {"step": 16, "pairs/kept": 0.0}]
    run = {"metrics": metrics, "items": {"trained": np.ones(2), "start": np.zeros(2)}}
    never = {"metrics": [{"step": 16, "pairs/kept": 0.0}], "items": {"trained": np.ones(2), "start": np.zeros(2)}}
    row = _drift({"bpo-f2": [run, never]})[2].split(" | ")
    assert row[4:] == ["5.64 (step 15), n/a", "1.35 (step 15), n/a |"], row


def test_each_start_model_gets_its_own_start_lines():
    """The ensemble grid's K = 1, 2, 5 start from three SFT ensembles: the report's start lines described the
    first method's start for every method."""
    import numpy as np

    from bpo.eval.grid_report import _start_standing
    from bpo.tasks.quickstart import breakdown

    cfg = load_config("quickstart")
    ids = [r.id for r in QuickstartTask(cfg.data.seed).prompts("eval", 4)]

    def run(seed: int, start: str, start_score: float) -> dict:
        rows = [{"id": i, "start_response": start, "trained_response": "x"} for i in ids]
        items = {"start": np.full(4, start_score), "trained": np.zeros(4), "reference": np.full(4, 0.5)}
        return {"seed": seed, "config": cfg, "rows": rows, "items": items}

    one_word, three_words = "alpha", "alpha beta gamma"
    runs = {
        "k1": [run(0, one_word, 1.0), run(1, one_word, 1.0)],
        "k2": [run(0, three_words, 0.0)],
        "k2-other-rule": [run(0, three_words, 0.0)],
    }
    standing = " ".join(_start_standing(runs))
    said = "(its SFT ensemble's greedy responses) beats the human reference on: the judge"
    assert f"The start model of k1 {said} 1.00" in standing
    assert f"The start model of k2, k2-other-rule {said} 0.00" in standing
    starts = [x.split(" | ") for x in breakdown(runs) if x.startswith("| start")]
    assert [(x[0], x[5]) for x in starts] == [
        ("| start of k1 (SFT)", "1.0"),
        ("| start of k2, k2-other-rule (SFT)", "3.0"),
    ]

    # a claim between methods of different starts compares their gains: K = 1's better start is not its doing
    from bpo.eval.grid_report import _claims

    for seed, r in enumerate(runs["k1"]):
        r["items"]["trained"] = np.full(4, 1.5 + seed / 10)  # gains +0.5, +0.6 from a start of 1.0
    runs["k2"].append(run(1, three_words, 0.0))
    for seed, r in enumerate(runs["k2"]):
        r["items"]["trained"] = np.full(4, 1.2 + seed / 20)  # gains +1.2, +1.25 from 0: behind K = 1 at the end
    row = next(x for x in _claims(runs, [("k2", "k1")], 0.15) if x.startswith("| k2 beats"))
    assert row.startswith("| k2 beats k1 (gain over its own start) | 2 | +0.70, +0.65 |") and "| holds" in row
    same = next(x for x in _claims(runs, [("k2-other-rule", "k2")], 0.15) if x.startswith("| k2-other-rule"))
    assert same.startswith("| k2-other-rule beats k2 | 1 | -1.20 |")  # one start: the final scores, as before

    one = {"k2": runs["k2"], "k2-other-rule": runs["k2-other-rule"]}  # one start: the lines as before
    assert "The start model (the SFT ensemble's greedy responses) beats" in " ".join(_start_standing(one))
    assert [x.split(" | ")[0] for x in breakdown(one) if x.startswith("| start")] == ["| start (SFT)"]
