"""The pairwise Python annotator: a function that picks one of two responses, loaded from a file path."""

import json

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from bpo.annotators import load_callable
from bpo.cli import app
from bpo.train.ledger import AnnotationLog

runner = CliRunner()

JUDGE = '''
def pick(prompt, a, b):
    """The shorter response wins; equal lengths are a tie."""
    if len(a) == len(b):
        return None
    return (0 if len(a) < len(b) else 1), f"shorter by {abs(len(a) - len(b))} characters"


def bad(prompt, a, b):
    return "A"


def biased(prompt, a, b):
    """Position bias: the first response wins, except when the second is much shorter."""
    with open(__file__ + ".calls", "a") as f:
        f.write("1\\n")
    return 1 if len(b) * 2 < len(a) else 0
'''


def test_a_pairwise_function_from_a_file_path_trains_and_its_rationale_is_logged(tmp_path):
    judge = tmp_path / "my_judge.py"  # not importable as a module: nothing on PYTHONPATH
    judge.write_text(JUDGE)
    over = tiny_config(
        tmp_path, **{"train.steps": 2, "annotator.kind": "pairwise", "annotator.callable": f"{judge}:pick"}
    )
    res = runner.invoke(app, ["train", "quickstart", *over, "--no-eval"])
    assert res.exit_code == 0, res.output
    entries = [e for e in AnnotationLog(tmp_path / "run" / "annotations.jsonl").entries if not e.identical]
    assert entries
    for e in entries:
        a, b = e.responses
        assert e.choice == (None if len(a) == len(b) else int(len(b) < len(a)))
        if e.choice is not None:
            assert e.rationale == f"shorter by {abs(len(a) - len(b))} characters"
    header = json.loads((tmp_path / "run" / "annotations.jsonl").read_text().splitlines()[0])
    assert f"{judge}:pick" in json.dumps(header)  # which function judged is part of the ledger's settings


def test_a_pairwise_function_that_answers_nonsense_is_refused(tmp_path):
    judge = tmp_path / "my_judge.py"
    judge.write_text(JUDGE)
    over = tiny_config(
        tmp_path, **{"train.steps": 2, "annotator.kind": "pairwise", "annotator.callable": f"{judge}:bad"}
    )
    res = runner.invoke(app, ["train", "quickstart", *over, "--no-eval"])
    line = res.output.strip().splitlines()[-1]
    assert res.exit_code == 2 and line.startswith("error: annotator pairwise:") and "returned 'A'" in line


def test_a_pairwise_annotator_needs_a_gold_judge_to_evaluate(tmp_path):
    judge = tmp_path / "my_judge.py"
    judge.write_text(JUDGE)
    over = tiny_config(tmp_path, **{"annotator.kind": "pairwise", "annotator.callable": f"{judge}:pick"})
    res = runner.invoke(app, ["train", "quickstart", *over])
    assert res.exit_code == 2 and "set eval.gold=RM" in res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "sft").exists()  # refused before any work


def test_load_callable_from_a_file_and_its_errors(tmp_path):
    judge = tmp_path / "j.py"
    judge.write_text(JUDGE)
    assert load_callable(f"{judge}:pick")("p", "ab", "a") == (1, "shorter by 1 characters")
    with pytest.raises(ValueError, match="no such file"):
        load_callable(f"{tmp_path / 'missing.py'}:pick")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_callable(f"{judge}:nope")


@pytest.mark.parametrize("both", [False, True])
def test_a_pairwise_function_may_be_asked_in_both_orders(tmp_path, both):
    """A function wrapping an LLM keeps its position bias when asked in one order only."""
    judge = tmp_path / "my_judge.py"
    judge.write_text(JUDGE)
    settings = {"annotator.kind": "pairwise", "annotator.callable": f"{judge}:biased", "train.steps": 2}
    over = tiny_config(tmp_path, **settings, **{"annotator.both_orders": both})
    res = runner.invoke(app, ["train", "quickstart", *over, "--no-eval"])
    assert res.exit_code == 0, res.output
    assert ("asked in both orders" in res.output) == both and ("asked in one order" in res.output) != both
    log = AnnotationLog(tmp_path / "run" / "annotations.jsonl")
    entries = [e for e in log.entries if not e.identical]
    assert entries
    for e in entries:
        a, b = e.responses
        first = 1 if len(b) * 2 < len(a) else 0
        second = 1 - (1 if len(a) * 2 < len(b) else 0)  # asked (b, a): its pick, back in (a, b) order
        want = first if not both else (first if first == second else None)
        assert e.choice == want and e.calls == (2 if both else 1)
        assert e.unjudged == (None if want is not None else "tie")
    paid = len((tmp_path / "my_judge.py.calls").read_text().splitlines())
    assert paid == log.calls == sum(e.calls for e in entries)
    if both:  # the bias cancels: a pair is won only by a response much shorter than the other
        assert sum(e.choice is None for e in entries) > 0
    header = json.loads((tmp_path / "run" / "annotations.jsonl").read_text().splitlines()[0])
    assert header["settings"]["annotator"]["both_orders"] is both
