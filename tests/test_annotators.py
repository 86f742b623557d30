import json

import pytest
import torch
from transformers import LlamaForSequenceClassification

from bpo.annotators import RewardModelAnnotator, ScoreAnnotator, load_callable
from bpo.data import PromptRecord
from bpo.model.policy import ModelLoadError, byte_tokenizer, tiny_llama_config


def length_score(record: PromptRecord, response: str) -> float:
    return float(len(response))


def test_score_annotator_prefers_higher_and_reports_ties():
    ann = ScoreAnnotator(length_score)
    recs = [PromptRecord("a", "p")] * 3
    out = ann.annotate(recs, [("short", "longer one"), ("longer one", "short"), ("same", "size")])
    assert [j.choice for j in out] == [1, 0, None]
    assert out[0].scores == (5.0, 10.0)


def test_callable_spec():
    fn = load_callable("test_annotators:length_score")
    assert fn(PromptRecord("a", "p"), "abc") == 3.0
    with pytest.raises(ValueError, match="must look like"):
        load_callable("no_colon")
    with pytest.raises(ValueError, match="cannot import"):
        load_callable("bpo.nothing_here:f")


def make_tiny_rm(tmp_path):
    """A reward model built from a config and saved to a folder, as a user's local copy would be."""
    tok = byte_tokenizer()
    cfg = tiny_llama_config(tok, num_hidden_layers=1, num_labels=1)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


@pytest.fixture()
def tiny_rm(tmp_path):
    return make_tiny_rm(tmp_path)


def test_reward_model_annotator_batches_consistently(tiny_rm):
    ann = RewardModelAnnotator(str(tiny_rm), batch_size=2, max_length=64, device="cpu")
    recs = [PromptRecord(str(i), f"prompt {i}") for i in range(5)]
    responses = [f"response number {i} " * (i + 1) for i in range(5)]
    batched = ann.scores(recs, responses)
    one_by_one = [ann.scores([r], [x])[0] for r, x in zip(recs, responses)]
    assert batched == pytest.approx(one_by_one, abs=1e-4)  # padding does not change a score
    pairs = list(zip(responses, reversed(responses)))
    judged = ann.annotate(recs, pairs)
    second = ann.scores(recs, [b for _, b in pairs])  # the score depends on the prompt too
    for j, a, b in zip(judged, batched, second):
        assert j.scores == pytest.approx((a, b), abs=1e-4)
        assert j.choice == (None if a == b else int(b > a))


def test_missing_reward_model_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hf download OpenAssistant/reward-model-deberta-v3-large-v2"):
        RewardModelAnnotator("OpenAssistant/reward-model-deberta-v3-large-v2")


def test_annotate_cli(tmp_path, tiny_rm):
    from typer.testing import CliRunner

    from bpo.cli import app

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(json.dumps({"prompt": f"q{i}", "chosen": "a" * i, "rejected": "b"}) for i in range(1, 4))
    )
    out = tmp_path / "judged.jsonl"
    res = CliRunner().invoke(
        app,
        [
            "annotate",
            "--pairs",
            str(pairs),
            "--out",
            str(out),
            "annotator.kind=reward_model",
            f"annotator.model={tiny_rm}",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["choice"] in (0, 1, None) for r in rows)
    bad = CliRunner().invoke(app, ["annotate", "--pairs", str(pairs), "--out", str(out)])
    assert bad.exit_code == 2 and "annotator.kind=reward_model, callable, pairwise or llm_judge" in bad.output


def test_a_non_finite_score_is_refused_not_taken_for_a_choice():
    ann = ScoreAnnotator(lambda record, response: float("nan") if response == "bad" else 1.0, "nan-scorer")
    with pytest.raises(ValueError, match=r"annotator nan-scorer gave a non-finite score \(nan, 1.0\) for prompt a"):
        ann.annotate([PromptRecord("a", "p")], [("bad", "good")])


def test_the_quickstart_judge_refuses_records_that_are_not_its_posts():
    from bpo.tasks.quickstart import QuickstartTask

    task = QuickstartTask(0)
    post = task.prompts("eval", 2)[1]
    assert isinstance(task.score(post, "anything"), float)
    for record in (PromptRecord("test-12", "Summarize this thread"), PromptRecord("mine", post.prompt)):
        with pytest.raises(ValueError, match="scores only the embedded task's posts"):
            task.score(record, "a summary")


def test_a_folder_without_a_trained_score_head_is_refused(tmp_path):
    """A causal LM loads as a sequence classifier with a random head: two loads gave win rates 0.125 and 1.0."""
    from transformers import LlamaForCausalLM
    from typer.testing import CliRunner

    from bpo.annotators.reward_model import RewardModelError
    from bpo.cli import app

    tok = byte_tokenizer()
    LlamaForCausalLM(tiny_llama_config(tok, num_hidden_layers=1)).save_pretrained(tmp_path / "clm")
    tok.save_pretrained(tmp_path / "clm")
    with pytest.raises(RewardModelError, match=r"clm is not a trained reward model: score.weight is not in it"):
        RewardModelAnnotator(str(tmp_path / "clm"), device="cpu")
    LlamaForSequenceClassification(tiny_llama_config(tok, num_hidden_layers=1, num_labels=2)).save_pretrained(
        tmp_path / "two"
    )
    tok.save_pretrained(tmp_path / "two")
    with pytest.raises(RewardModelError, match=r"has 2 outputs; a reward model gives one score"):
        RewardModelAnnotator(str(tmp_path / "two"), device="cpu")
    from conftest import tiny_config

    over = tiny_config(tmp_path, **{"eval.gold": str(tmp_path / "clm")})
    res = CliRunner().invoke(app, ["train", "quickstart", *over])
    last = res.output.strip().splitlines()[-1]  # transformers' own load bar may stand above it
    assert res.exit_code == 2 and last.startswith("error: ") and "Traceback" not in res.output
    assert "not a trained reward model" in last and not (tmp_path / "sft").exists()  # before member SFT


def test_a_reward_model_scores_at_the_length_it_was_trained_at(tmp_path):
    rm = make_tiny_rm(tmp_path)
    (rm / "bpo_rm.json").write_text(json.dumps({"input": "concat", "max_length": 24}))
    recs = [PromptRecord("a", "a long prompt " * 10)]
    own = RewardModelAnnotator(str(rm), device="cpu")
    assert own.rm.max_length == 24 and own.notes == []
    assert own.scores(recs, ["x " * 40]) == RewardModelAnnotator(str(rm), max_length=24, device="cpu").scores(
        recs, ["x " * 40]
    )
    longer = RewardModelAnnotator(str(rm), max_length=64, device="cpu")
    assert longer.rm.max_length == 64 and "trained at 24 tokens; it scores at 64" in longer.notes[0]
    assert longer.scores(recs, ["x " * 40]) != own.scores(recs, ["x " * 40])  # the length moves the score
    plain = make_tiny_rm(tmp_path / "other")  # no bpo_rm.json: 1024, as before
    assert RewardModelAnnotator(str(plain), device="cpu").rm.max_length == 1024


@pytest.mark.parametrize(
    "body, said",
    [("return None", "returned None for prompt a; expected a number"), ("raise KeyError('oops')", "raised KeyError")],
)
def test_a_callable_that_returns_nothing_or_raises_is_one_line(tmp_path, body, said):
    from conftest import tiny_config
    from typer.testing import CliRunner

    from bpo.annotators import AnnotatorError
    from bpo.cli import app

    judge = tmp_path / "judge.py"
    judge.write_text(f"def score(record, response):\n    {body}\n")
    ann = ScoreAnnotator(load_callable(f"{judge}:score"), "callable:mine")
    with pytest.raises(AnnotatorError, match=said.replace("prompt a", "prompt a")):
        ann.annotate([PromptRecord("a", "p")], [("x", "yy")])
    over = tiny_config(tmp_path, **{"annotator.kind": "callable", "annotator.callable": f"{judge}:score"})
    res = CliRunner().invoke(app, ["train", "quickstart", *over, "--no-eval"])
    last = res.output.strip().splitlines()[-1]
    assert res.exit_code == 2 and last.startswith("error: annotator callable:") and "Traceback" not in res.output


def test_a_judges_recorded_accuracy_travels_to_the_log_eval_and_report(tmp_path):
    """A reward model at chance was used silently and its run's report did not mention its accuracy."""
    from conftest import tiny_config
    from typer.testing import CliRunner

    from bpo.cli import app

    rm = make_tiny_rm(tmp_path)
    held = {"accuracy": 0.473, "ci95": [0.374, 0.571], "pairs": 100, "ties": 0}
    (rm / "rm.json").write_text(json.dumps({"heldout": held}))
    (rm / "bpo_rm.json").write_text(json.dumps({"input": "concat", "max_length": 64}))
    over = tiny_config(tmp_path, **{"annotator.kind": "reward_model", "annotator.model": str(rm)})
    res = CliRunner().invoke(app, ["train", "quickstart", *over])
    assert res.exit_code == 0, res.output
    said = f"warning: reward model {rm}: held-out accuracy 0.473 [0.374, 0.571] on 100 pairs (rm.json); its interval"
    assert said in res.output
    run = tmp_path / "run"
    assert json.loads((run / "eval.json").read_text())["judge_accuracy"] == held
    assert (
        "the judge's held-out accuracy 0.473 [0.374, 0.571] on 100 pairs (includes 0.5"
        in (run / "report.md").read_text()
    )
