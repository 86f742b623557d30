"""Best-of-n: sample n responses, train on best vs worst (or a random pair); the budget counts real calls."""

import json
import math

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from bpo.cli import app
from bpo.train.ledger import AnnotationLog

runner = CliRunner()

SCORER = """
def score(record, response):
    with open(__file__ + ".calls", "a") as f:  # one line per call: the test counts what was paid for
        f.write("x\\n")
    return float(len(response))


def pick(prompt, a, b):
    return None if len(a) == len(b) else int(len(b) < len(a))
"""


def run(tmp_path, name, **over):
    judge = tmp_path / "judge.py"
    judge.write_text(SCORER)
    settings = {
        "train.steps": 2,
        "train.phases": 2,
        "output_dir": str(tmp_path / name),
        "sft.seeds": "[0]",
        "annotator.kind": "callable",
        "annotator.callable": f"{judge}:score",
    }
    res = runner.invoke(app, ["train", "quickstart", *tiny_config(tmp_path, **{**settings, **over}), "--no-eval"])
    assert res.exit_code == 0, res.output
    return tmp_path / name


def test_best_of_4_trains_best_against_worst_and_counts_every_score(tmp_path):
    folder = run(tmp_path, "bon", **{"sampling.n": 4})
    log = AnnotationLog(folder / "annotations.jsonl")
    judged = [e for e in log.entries if not e.identical]
    assert judged and all(len(e.responses) == 4 for e in log.entries)
    for e in judged:
        lengths = [float(len(r)) for r in e.responses]
        assert e.scores == lengths and e.calls == 4
        best, worst = lengths.index(max(lengths)), lengths.index(min(lengths))
        assert e.rejected == worst and e.choice == (None if max(lengths) == min(lengths) else best)
    paid = len((tmp_path / "judge.py.calls").read_text().splitlines())
    assert paid == 4 * len(judged) == log.calls
    assert json.loads((folder / "run.json").read_text())["annotator_calls"] == paid
    metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["annotations/calls"] == paid
    # K = 1, F = T: every step starts a phase, so policy = reference and the loss is log 2 exactly
    # (the chosen and rejected rows must take the sampler's log-probs of the right responses)
    assert all(m["loss"] == pytest.approx(math.log(2), abs=1e-5) for m in metrics)


def test_the_first_two_of_n_samples_are_the_pair_sampling_would_draw(tmp_path):
    four = AnnotationLog(run(tmp_path, "four", **{"sampling.n": 4}) / "annotations.jsonl").entries
    two = AnnotationLog(run(tmp_path, "two") / "annotations.jsonl").entries
    assert [e.tokens[:2] for e in four if e.phase == 0] == [e.tokens for e in two if e.phase == 0]


def test_a_random_pair_of_n_is_judged_once_by_a_pairwise_function(tmp_path):
    judge = tmp_path / "judge.py"
    over = {
        "sampling.n": 4,
        "sampling.pairs": "random",
        "annotator.kind": "pairwise",
        "annotator.callable": f"{judge}:pick",
    }
    log = AnnotationLog(run(tmp_path, "rand", **over) / "annotations.jsonl")
    judged = [e for e in log.entries if not e.identical and e.choice is not None]
    assert (
        judged and all(e.calls == 1 for e in judged) and log.calls == len([e for e in log.entries if not e.identical])
    )
    drawn = set()
    for e in judged:
        a, b = e.trained_pair()
        assert a != b and len(e.responses[a]) < len(e.responses[b])  # the shorter of the drawn pair won
        drawn.add(tuple(sorted((a, b))))
    assert len(drawn) > 1 or len(judged) < 3  # not always the same two samples


def test_best_worst_needs_a_scoring_annotator(tmp_path):
    over = tiny_config(tmp_path, **{"sampling.n": 4, "annotator.kind": "pairwise", "annotator.callable": "x.py:pick"})
    res = runner.invoke(app, ["train", "quickstart", *over, "--no-eval"])
    assert res.exit_code == 2 and "sampling.pairs = 'best_worst': must be random" in res.output


def test_two_samples_count_one_call_per_response_scored(tmp_path):
    """n = 2 counted one call per pair although two responses were scored: calls were not comparable across n."""
    folder = run(tmp_path, "pair")
    log = AnnotationLog(folder / "annotations.jsonl")
    judged = [e for e in log.entries if not e.identical]
    assert judged and all(e.calls == 2 for e in judged)
    paid = len((tmp_path / "judge.py.calls").read_text().splitlines())
    assert paid == 2 * len(judged) == log.calls == json.loads((folder / "run.json").read_text())["annotator_calls"]
    counts = json.loads((folder / "run.json").read_text())["pairs"]
    assert counts["judged"] + counts["tie"] == len(judged) and counts["identical"] == log.identical_pairs
