"""Proxy and gold reward models that are independent, and shown to be: `bpo rm` records what each trained on,
and a run refuses judges that share training prompts or an initialisation, or have seen an eval prompt."""

import json

import pytest
from conftest import tiny_config
from test_rm import train_tiny_rm, write_trl
from typer.testing import CliRunner

from bpo.annotators.reward_model import PROMPTS_FILE, judge_independence, prompt_key, prompts_digest
from bpo.cli import app
from bpo.config import load_config
from bpo.data import load_pairs

runner = CliRunner()


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    """Reward models on 40 prompts: proxy 1/2 (init 0), gold 2/2 (init 1), and two that break a rule."""
    tmp = tmp_path_factory.mktemp("judges")
    data = tmp / "pairs.jsonl"
    write_trl(data, 40)
    made = {}
    for name, part, seed in (("proxy", "1/2", 0), ("gold", "2/2", 1), ("twin", "1/2", 1), ("clone", "2/2", 0)):
        res = train_tiny_rm(data, tmp / name, "--part", part, "--seed", str(seed), "--holdout", "0.25", "--epochs", "1")
        assert res.exit_code == 0, res.output
        made[name] = tmp / name
    evals = tmp / "eval.jsonl"  # three prompts the proxy trained on, among others no judge has seen
    trained = (tmp / "proxy" / PROMPTS_FILE).read_text().split()
    rows = [p for p in load_pairs(data) if prompt_key(p.prompt) in trained][:3]
    rows = [{"prompt": p.prompt, "label": p.chosen} for p in rows]
    rows += [{"prompt": f"a question no judge saw {i}?", "label": "yes"} for i in range(5)]
    evals.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**made, "data": data, "eval": evals}


def test_rm_json_records_the_split_the_init_and_the_training_prompts(judges):
    pairs = load_pairs(judges["data"])
    seen = {}
    for name in ("proxy", "gold"):
        rm = json.loads((judges[name] / "rm.json").read_text())
        keys = (judges[name] / PROMPTS_FILE).read_text().split()
        split = rm["split"]
        assert split["seed"] == 0 and split["part"] == {"proxy": "1/2", "gold": "2/2"}[name]
        assert rm["init_seed"] == {"proxy": 0, "gold": 1}[name]
        assert split["prompts_train"] == len(keys) == 15 and split["prompts_heldout"] == 5
        assert split["train_prompts_sha256"] == prompts_digest(keys)
        assert set(keys) <= {prompt_key(p.prompt) for p in pairs}
        seen[name] = set(keys)
    assert not seen["proxy"] & seen["gold"]


def _run(judges, tmp_path, annotator, gold, *extra):
    over = tiny_config(
        tmp_path,
        **{"annotator.kind": "reward_model", "annotator.model": str(judges[annotator]), "eval.gold": str(judges[gold])},
    )
    return runner.invoke(app, ["train", "quickstart", *over, *extra])


@pytest.mark.parametrize(
    ("annotator", "gold", "extra", "says"),
    [
        ("proxy", "twin", [], "were trained on 15 of the same prompts"),
        ("proxy", "proxy", [], "are the same model"),
        ("proxy", "clone", [], "start from the same initialisation (tiny-random-llama, seed 0)"),
        ("proxy", "gold", ["data.eval=EVAL"], "3 of the 4 evaluation prompts (data.eval) are among the training"),
    ],
)
def test_a_run_refuses_judges_that_are_not_independent(judges, tmp_path, annotator, gold, extra, says):
    extra = [x.replace("EVAL", str(judges["eval"])) for x in extra]
    res = _run(judges, tmp_path, annotator, gold, *extra)
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and says in line and "eval.allow_judge_overlap=true" in line
    assert "Traceback" not in res.output
    assert not (tmp_path / "sft").exists()  # refused before member SFT


def test_independent_judges_pass_and_the_override_warns(judges):
    def cfg(gold, *extra):
        over = [f"annotator.model={judges['proxy']}", f"eval.gold={judges[gold]}", *extra]
        return load_config(None, ["annotator.kind=reward_model", *over])

    eval_prompts = [json.loads(x)["prompt"] for x in judges["eval"].read_text().splitlines()]
    assert judge_independence(cfg("gold"), eval_prompts[3:]) == ([], [])
    problems, notes = judge_independence(cfg("twin"), eval_prompts)
    assert len(problems) == 3 and not notes  # eval prompts both saw, and the training prompts they share
    problems, notes = judge_independence(cfg("twin", "eval.allow_judge_overlap=true"), eval_prompts)
    assert not problems and len(notes) == 3 and all(n.startswith("warning: ") for n in notes)


def test_a_judge_without_a_record_is_said_not_checked(judges, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in judges["gold"].iterdir():
        if f.name != PROMPTS_FILE:
            (bare / f.name).write_bytes(f.read_bytes())
    cfg = load_config(None, ["annotator.kind=reward_model", f"annotator.model={judges['proxy']}", f"eval.gold={bare}"])
    problems, notes = judge_independence(cfg, ["anything?"])
    assert not problems and len(notes) == 1 and f"eval.gold {bare} records no training prompts" in notes[0]
