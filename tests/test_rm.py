"""`bpo rm`: Bradley-Terry reward models from every pair format, loadable by both routes."""

import csv
import json
import random

import pytest
import torch
from transformers import LlamaForSequenceClassification
from typer.testing import CliRunner

from bpo.cli import app
from bpo.data import PromptRecord, load_pairs, plain_dialogue
from bpo.model.policy import byte_tokenizer, tiny_llama_config

runner = CliRunner()


def _pairs(n: int) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected): the chosen reply agrees politely, the rejected one refuses rudely."""
    return [(f"question {i}: can you help?", f"yes, gladly {i}", f"no. go away {i}") for i in range(n)]


def write_trl(path, n=64):
    with open(path, "w") as f:
        for p, c, r in _pairs(n):
            f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")


def write_hh(path, n=64):
    with open(path, "w") as f:
        for p, c, r in _pairs(n):
            head = f"\n\nHuman: {p}\n\nAssistant:"
            f.write(json.dumps({"chosen": f"{head} {c}", "rejected": f"{head} {r}"}) + "\n")


def write_tldr(path, n=64):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["query", "postprocessed_response", "reference_responses", "preferred"])
        w.writeheader()
        for i, (p, c, r) in enumerate(_pairs(n)):
            ours_better = i % 2 == 0
            w.writerow(
                {
                    "query": p + "\nTL;DR:",
                    "postprocessed_response": c if ours_better else r,
                    "reference_responses": r if ours_better else c,
                    "preferred": "ours" if ours_better else "reference",
                }
            )
        w.writerow({"query": "unjudged", "postprocessed_response": "a", "reference_responses": "b", "preferred": ""})


def train_tiny_rm(data, out, *extra: str):
    """`bpo rm` on tiny-random-llama with 64-token inputs and nothing held out."""
    args = ["rm", str(data), "--out", str(out), "--model", "tiny-random-llama", "--holdout", "0", "--max-length", "64"]
    return runner.invoke(app, [*args, *extra])


WRITERS = {"trl.jsonl": write_trl, "hh.jsonl": write_hh, "tldr.csv": write_tldr}


@pytest.mark.parametrize("name", list(WRITERS))
def test_rm_trains_on_every_format_and_loads_both_ways(tmp_path, name):
    data = tmp_path / name
    WRITERS[name](data)
    pairs = load_pairs(data)
    assert len(pairs) == 64 and all("yes" in p.chosen and "no." in p.rejected for p in pairs)  # unjudged row left out
    out = tmp_path / "rm"
    res = train_tiny_rm(data, out, "--epochs", "4", "--lr", "3e-3", "--batch-size", "8")
    assert res.exit_code == 0, res.output
    result = json.loads((out / "rm.json").read_text())
    assert result["pairs_train"] == 64 and result["heldout"] is None and result["wall_seconds"] > 0
    assert result["train"]["accuracy"] >= 0.9, result  # chance is 0.5
    assert result["loss_last"] < result["loss_first"]

    # route 1: plain PEFT, the adapter (LoRA and score head) on its backbone
    from peft import PeftModel

    from bpo.annotators.reward_model import load_backbone

    spec = json.loads((out / "bpo_rm.json").read_text())
    assert spec["adapter_of"] == "tiny-random-llama" and not (out / "model.safetensors").exists()
    base, tok, _ = load_backbone(spec["adapter_of"], spec["init_seed"])
    tok.pad_token = tok.pad_token or tok.eos_token
    model = PeftModel.from_pretrained(base, str(out)).eval()
    # route 2: the training annotator
    from bpo.annotators import build_annotator
    from bpo.config import load_config

    ann = build_annotator(load_config(None, ["annotator.kind=reward_model", f"annotator.model={out}", "device=cpu"]))
    recs = [PromptRecord(str(i), p.prompt) for i, p in enumerate(pairs[:8])]
    judged = ann.annotate(recs, [(p.rejected, p.chosen) for p in pairs[:8]])
    assert sum(j.choice == 1 for j in judged) >= 7
    from bpo.annotators.reward_model import encode

    enc = encode(tok, "concat", [pairs[0].prompt], [pairs[0].chosen], 64)
    with torch.no_grad():
        direct = model(**enc).logits[0, 0].item()
    assert judged[0].scores[1] == pytest.approx(direct, abs=1e-5)


def test_rm_holdout_and_parts_are_disjoint(tmp_path):
    from bpo.train.rm import split_pairs

    data = tmp_path / "trl.jsonl"
    write_trl(data, 40)
    pairs = load_pairs(data)
    a_train, a_held, _ = split_pairs(pairs, (1, 2), 0.25, 0)
    b_train, b_held, _ = split_pairs(pairs, (2, 2), 0.25, 0)
    ids = lambda xs: {p.id for p in xs}  # noqa: E731
    assert len(a_train) == 15 and len(a_held) == 5
    assert not (ids(a_train) | ids(a_held)) & (ids(b_train) | ids(b_held))
    assert len(ids(a_train) | ids(a_held) | ids(b_train) | ids(b_held)) == 40


def test_rm_parts_split_prompts_whatever_each_excludes():
    """The split was by pair, after --exclude: two parts shared prompts (251 of 500 TL;DR pairs) when their
    seeds or exclusions differed, and a prompt's pairs fell on both sides of the held-out cut."""
    from bpo.annotators.reward_model import prompt_key
    from bpo.data import PreferenceRecord
    from bpo.train.rm import split_pairs

    # three pairs per prompt, the prompt written with other spacing in one of them
    pairs = [
        PreferenceRecord(f"{i}-{j}", f"question {i}:  help?" if j else f"question {i}: help?", f"yes {j}", f"no {j}")
        for i in range(30)
        for j in range(3)
    ]
    keys = lambda xs: {prompt_key(p.prompt) for p in xs}  # noqa: E731
    skip = set(sorted(keys(pairs))[:12])  # a proxy told to leave out some prompts, the gold not
    a_train, a_held, a = split_pairs(pairs, (1, 2), 0.2, 7, skip)
    b_train, b_held, b = split_pairs(pairs, (2, 2), 0.2, 7)
    assert not (keys(a_train) | keys(a_held)) & (keys(b_train) | keys(b_held))
    assert not keys(a_train) & keys(a_held) and not keys(b_train) & keys(b_held)
    assert not (keys(a_train) | keys(a_held)) & skip
    assert all(sum(p.prompt.split() == q.prompt.split() for q in a_train) == 3 for p in a_train)  # whole prompts
    whole_a = split_pairs(pairs, (1, 2), 0.2, 7)
    assert keys(a_train) | keys(a_held) | skip >= keys(whole_a[0]) | keys(whole_a[1])  # exclusion never moves a prompt
    assert a["prompts_excluded"] == len(skip & (keys(whole_a[0]) | keys(whole_a[1]))) == a["pairs_excluded"] / 3
    assert a["prompts_in_file"] == b["prompts_in_file"] == 30 and a["seed"] == 7 and a["part"] == "1/2"
    assert split_pairs(pairs, (1, 2), 0.2, 8)[0] != a_train  # the split seed decides the parts


def test_rm_annotator_uses_its_own_tokenizer_in_training(tmp_path):
    """A run whose reward model tokenizes differently from the policy: the ledger's scores are the RM's own."""
    from conftest import tiny_config

    tok = byte_tokenizer(reverse=True)  # same bytes, other ids: not the policy's tokenizer
    backbone = tmp_path / "backbone"
    torch.manual_seed(0)
    LlamaForSequenceClassification(tiny_llama_config(tok, num_hidden_layers=1, num_labels=1)).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    data = tmp_path / "trl.jsonl"
    write_trl(data, 16)
    out = tmp_path / "rm"
    res = runner.invoke(
        app,
        [
            "rm",
            str(data),
            "--out",
            str(out),
            "--model",
            str(backbone),
            "--holdout",
            "0",
            "--max-length",
            "64",
            "--lr",
            "1e-3",
        ],
    )
    assert res.exit_code == 0, res.output
    over = tiny_config(
        tmp_path,
        **{
            "train.steps": 2,
            "train.phases": 1,
            "annotator.kind": "reward_model",
            "annotator.model": str(out),
            "annotator.max_length": 64,
        },
    )
    res = runner.invoke(app, ["train", "quickstart", *over, "--no-eval"])
    assert res.exit_code == 0, res.output

    from bpo.annotators.reward_model import RewardModel, encode
    from bpo.config import load_config
    from bpo.data import load_source
    from bpo.train.ledger import AnnotationLog

    cfg = load_config("quickstart", over)
    prompts = {r.id: r.prompt for r in load_source(cfg.data, "train", 64, None)}
    judged = [e for e in AnnotationLog(tmp_path / "run" / "annotations.jsonl").entries if e.scores]
    assert judged
    rm = RewardModel(str(out), max_length=64, device="cpu")
    policy_tok = byte_tokenizer()
    assert policy_tok("ab").input_ids != rm.tokenizer("ab").input_ids  # the two tokenizers do differ
    for e in judged:
        own = rm.scores([prompts[e.prompt_id]] * 2, e.responses)
        assert e.scores == pytest.approx(own, abs=1e-5)
        enc = encode(policy_tok, "concat", [prompts[e.prompt_id]] * 2, e.responses, 64)
        with torch.no_grad():
            wrong = rm.model(**enc).logits[:, 0].tolist()
        assert wrong != pytest.approx(own, abs=1e-5)  # the policy's ids would have given other scores


def test_plain_dialogue_matches_the_bpo_splits_format():
    hh = (
        "\n\nHuman: how can i tickle someone?\n\nAssistant: Do you want to torture someone?"
        "\n\nHuman: a little bit\n\nAssistant:"
    )
    assert plain_dialogue(hh) == (
        "user: how can i tickle someone? assistant: Do you want to torture someone? user: a little bit assistant: "
    )


def test_top_layers_leaves_the_lower_blocks_as_they_were(tmp_path):
    from safetensors.torch import load_file

    from bpo.train.rm import load_backbone

    data = tmp_path / "trl.jsonl"
    write_trl(data, 16)
    out = tmp_path / "rm"
    res = train_tiny_rm(data, out, "--lr", "1e-2", "--top-layers", "1")
    assert res.exit_code == 0, res.output
    start = load_backbone("tiny-random-llama")[0].state_dict()
    saved = load_file(str(out / "adapter_model.safetensors"))
    lora = [k for k in saved if "lora_" in k]
    assert lora and all(".layers.1." in k for k in lora)  # the top block only; the lower one is the backbone's
    head = [k for k in saved if ".score." in k]
    assert head and not torch.equal(saved[head[0]], start["score.weight"])  # the head trained, and saved


def _tiny_rm(tmp_path, name: str, swap: bool = False, *extra: str):
    data = tmp_path / f"{name}.jsonl"
    with open(data, "w") as f:
        for p, c, r in _pairs(16):
            c, r = (r, c) if swap else (c, r)
            f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")
    out = tmp_path / name
    res = train_tiny_rm(data, out, "--lr", "3e-3", "--epochs", "2", *extra)
    assert res.exit_code == 0, res.output
    return out


def test_a_gold_judge_scores_the_evaluation_beside_the_annotator(tmp_path):
    from conftest import tiny_config

    from bpo.annotators.reward_model import RewardModel
    from bpo.config import load_config
    from bpo.data import load_source

    proxy = _tiny_rm(tmp_path, "proxy", False, "--part", "1/2")
    gold = _tiny_rm(tmp_path, "gold", True, "--part", "2/2", "--seed", "1")  # independent: other prompts and init
    over = tiny_config(
        tmp_path,
        **{
            "train.steps": 2,
            "train.phases": 1,
            "annotator.kind": "reward_model",
            "annotator.model": str(proxy),
            "annotator.max_length": 64,
            "eval.gold": str(gold),
            "eval.max_new_tokens": 6,
        },
    )
    res = runner.invoke(app, ["train", "quickstart", *over])
    assert res.exit_code == 0, res.output
    assert "the annotator's own verdict" in res.output
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["judge"] == f"rm:{gold}" and "win_rate_vs_reference" in result["annotator"]
    items = [json.loads(x) for x in (tmp_path / "run" / "eval_items.jsonl").read_text().splitlines()]
    records = load_source(load_config("quickstart", over).data, "eval", 4, None)
    prompts = [r.prompt for r in records]
    texts = [row["trained_response"] for row in items]
    assert [row["trained"] for row in items] == pytest.approx(
        RewardModel(str(gold), max_length=64, device="cpu").scores(prompts, texts), abs=1e-5
    )
    own = RewardModel(str(proxy), max_length=64, device="cpu").scores(prompts, texts)
    assert [row["annotator_trained"] for row in items] == pytest.approx(own, abs=1e-5)
    assert own != pytest.approx([row["trained"] for row in items], abs=1e-3)  # two judges, two verdicts


def test_a_missing_gold_judge_fails_before_sft(tmp_path):
    from conftest import tiny_config

    over = tiny_config(tmp_path, **{"eval.gold": str(tmp_path / "no-such-rm")})
    res = runner.invoke(app, ["train", "quickstart", *over])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("error: cannot load reward model")
    assert not (tmp_path / "sft").exists()
    # with --no-eval the gold judge has nothing to judge: it is neither loaded nor required
    over = tiny_config(tmp_path / "b", **{"eval.gold": str(tmp_path / "no-such-rm"), "train.steps": 2})
    res = runner.invoke(app, ["train", "quickstart", *over, "--no-eval"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "run" / "run.json").exists()


def hh_and_eval_prompts(tmp_path):
    """20 HH-RLHF pairs, and an eval file with 5 of their prompts in the BPO splits' form ('user: ... assistant: ')."""
    data = tmp_path / "hh.jsonl"
    write_hh(data, 20)
    held = tmp_path / "eval.jsonl"
    held.write_text(
        "".join(json.dumps({"prompt": f"user: question {i}: can you help? assistant: "}) + "\n" for i in range(5))
    )
    return data, held


def test_exclude_leaves_out_pairs_on_those_prompts(tmp_path):
    data, held = hh_and_eval_prompts(tmp_path)
    out = tmp_path / "rm"
    res = train_tiny_rm(data, out, "--dialogue", "plain", "--exclude", str(held))
    assert res.exit_code == 0, res.output
    assert "left out 5 pairs on 5 prompts of part 1/1: --exclude" in res.output
    assert json.loads((out / "rm.json").read_text())["pairs_train"] == 15


def test_a_pairwise_annotator_is_evaluated_by_the_gold_judge_alone(tmp_path):
    """A judge without scores (pairwise, llm_judge, human) trains; eval.gold judges, nothing asks it for scores."""
    from conftest import tiny_config

    judge = tmp_path / "judge.py"
    judge.write_text("def pick(prompt, a, b):\n    return None if len(a) == len(b) else int(len(b) < len(a))\n")
    gold = _tiny_rm(tmp_path, "gold")
    over = tiny_config(
        tmp_path,
        **{
            "train.steps": 2,
            "train.phases": 1,
            "annotator.kind": "pairwise",
            "annotator.callable": f"{judge}:pick",
            "eval.gold": str(gold),
            "eval.max_new_tokens": 6,
        },
    )
    res = runner.invoke(app, ["train", "quickstart", *over])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["judge"] == f"rm:{gold}" and "annotator" not in result


def test_degenerate_pairs_are_left_out_and_an_at_chance_judge_is_warned(tmp_path):
    """Pairs whose chosen equals rejected gave accuracy 0.000 without a word."""
    data = tmp_path / "same.jsonl"
    rows = [{"prompt": f"q{i}?", "chosen": f"answer {i}", "rejected": f"answer {i}"} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = train_tiny_rm(data, tmp_path / "rm0", "--holdout", "0")
    assert res.exit_code == 2 and "all 16 pairs have the same chosen and rejected response" in res.output
    rows += [{"prompt": f"p{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = train_tiny_rm(data, tmp_path / "rm", "--holdout", "0.5", "--epochs", "1")
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "rm" / "rm.json").read_text())
    assert result["degenerate_pairs_left_out"] == 16 and result["pairs_train"] == 8
    assert "warning: left out 16 pairs whose chosen and rejected responses are the same" in res.output
    held = result["heldout"]
    assert held["ci95"][0] <= 0.5  # 8 held-out pairs cannot show a judge beats a coin
    assert "interval includes 0.5, so this judge is not shown to beat a coin" in res.output
    assert result["warnings"] and all(w in res.output for w in result["warnings"])
    assert "reward model: scoring 8 held-out pairs 16/16" in res.output  # scoring said, not ~10 silent minutes


def test_rm_out_never_deletes_what_bpo_did_not_write(tmp_path, monkeypatch):
    """`bpo rm pairs.jsonl --out .` deleted every file in the folder, then failed."""
    data = tmp_path / "pairs.jsonl"
    write_trl(data, 16)
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(work)
    for out in (".", str(work)):
        res = train_tiny_rm(data, out)
        assert res.exit_code == 2 and "bpo replaces only its own output" in res.output, res.output
    assert (work / "thesis.tex").read_text() == "years of work"
    rm = tmp_path / "rm"
    assert train_tiny_rm(data, rm).exit_code == 0
    first = json.loads((rm / "rm.json").read_text())
    res = train_tiny_rm(data, rm, "--seed", "1")  # a reward model bpo wrote: replaced
    assert res.exit_code == 0 and json.loads((rm / "rm.json").read_text())["init_seed"] == 1 != first["init_seed"]
    res = train_tiny_rm(data, work, "--force")
    assert res.exit_code == 0 and (work / "rm.json").exists() and not (work / "thesis.tex").exists()
    assert not [p for p in tmp_path.iterdir() if ".bpo-" in p.name]


def test_balanced_accuracy_by_hand():
    from bpo.stats import at_chance, balanced_accuracy

    right, groups = [1, 1, 1, 1, 1, 1, 0, 0], ["policy"] * 6 + ["reference"] * 2
    b = balanced_accuracy(right, groups)
    assert b["accuracy"] == 0.5 and b["ci95"] == [0.5, 0.5]  # no spread within a group: every resample is 0.5
    assert b["groups"] == {"policy": {"accuracy": 1.0, "pairs": 6}, "reference": {"accuracy": 0.0, "pairs": 2}}
    assert at_chance({"accuracy": 0.75, "ci95": [0.6, 0.9], "balanced": b})  # plain 0.75 beats 0.5; it does not
    assert not at_chance({"accuracy": 0.75, "ci95": [0.6, 0.9]})
    b = balanced_accuracy([1, 1, 0, 1, 1, 0], ["policy"] * 4 + ["reference"] * 2)
    assert b["accuracy"] == pytest.approx((0.75 + 0.5) / 2)


def test_a_judge_that_prefers_one_source_is_not_shown_to_beat_a_coin(tmp_path):
    """TL;DR's judged pairs prefer the policy's summary 64% of the time: a judge that always picks it scored
    0.64 and was said to beat a coin. The accuracy balanced over the two sources is what must beat 0.5."""
    data = tmp_path / "tldr.csv"
    coin = random.Random(0)  # which pairs prefer the reference: nothing in their text says so
    with open(data, "w", newline="") as f:
        w = csv.DictWriter(f, ["query", "postprocessed_response", "reference_responses", "preferred"])
        w.writeheader()
        for p, ours, ref in _pairs(128):  # the policy's style is learnable, its quality is not
            w.writerow(
                {
                    "query": p + "\nTL;DR:",
                    "postprocessed_response": ours,
                    "reference_responses": ref,
                    "preferred": "reference" if coin.random() < 0.2 else "ours",
                }
            )
    out = tmp_path / "rm"
    split = ["--holdout", "0.5", "--epochs", "4", "--lr", "3e-3"]
    res = train_tiny_rm(data, out, *split)
    assert res.exit_code == 0, res.output
    held = json.loads((out / "rm.json").read_text())["heldout"]
    rows = [json.loads(x) for x in (out / "heldout_scores.jsonl").read_text().splitlines()]
    assert len(rows) == held["pairs"] == 64 and {r["group"] for r in rows} == {"policy", "reference"}
    by = {g: [r["chosen"] > r["rejected"] for r in rows if r["group"] == g] for g in ("policy", "reference")}
    assert held["accuracy"] == pytest.approx(sum(r["chosen"] > r["rejected"] for r in rows) / 64)
    assert held["balanced"]["accuracy"] == pytest.approx(sum(sum(v) / len(v) for v in by.values()) / 2)
    assert held["accuracy"] >= 0.7 and held["ci95"][0] > 0.5  # plain accuracy "beats a coin" ...
    assert held["balanced"]["ci95"][0] <= 0.5  # ... by preferring the policy's summaries, which balanced shows
    assert "warning: balanced accuracy" in res.output and "not shown to beat a coin" in res.output
    assert "balanced over the preferred response's source (policy" in res.output

    # measured again without training: the same held-out pairs, the same figures
    (out / "heldout_scores.jsonl").unlink()
    again = runner.invoke(app, ["rm", str(data), "--out", str(out), "--max-length", "64", *split, "--measure-only"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "rm.json").read_text())["heldout"]["accuracy"] == held["accuracy"]
    rows2 = [json.loads(x) for x in (out / "heldout_scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows2] == [r["id"] for r in rows]
    assert [r["chosen"] for r in rows2] == pytest.approx([r["chosen"] for r in rows], abs=1e-4)
    other = runner.invoke(app, ["rm", str(data), "--out", str(out), *split, "--split-seed", "1", "--measure-only"])
    assert other.exit_code == 2 and "was trained on other prompts than this split" in other.output
    none = runner.invoke(app, ["rm", str(data), "--out", str(tmp_path / "none"), "--measure-only"])
    assert none.exit_code == 2 and "holds no reward model bpo wrote" in none.output
    from bpo.train.rm import rm_lock  # one writer: a folder another bpo rm holds is refused, training or measuring

    with rm_lock(out):
        for extra in ([], ["--measure-only"]):
            busy = runner.invoke(app, ["rm", str(data), "--out", str(out), "--max-length", "64", *split, *extra])
            assert busy.exit_code == 2 and f"reward model {out} is in use by pid" in busy.output


def test_a_judge_that_reads_only_lengths_is_warned():
    """The TL;DR judges scored what "the longer summary wins" scores; nothing said so."""
    from bpo.train.rm_measure import accuracy, rm_warnings

    chars = [[10, 5], [10, 5], [5, 10], [10, 5], [10, 5]]
    scores = [(1.0, 0.0), (2.0, 1.0), (0.0, 1.0), (3.0, 0.0), (0.0, 1.0)]  # right where the chosen is longer, but one
    rows = [{"id": str(i), "chosen": c, "rejected": r, "chars": n} for i, ((c, r), n) in enumerate(zip(scores, chars))]
    held = accuracy(rows)
    rule = held["length_rule"]
    assert held["accuracy"] == 0.6 and rule["rule"] == "the longer response wins" and rule["accuracy"] == 0.8
    assert rule["judge_minus_rule"] == pytest.approx(-0.2)
    result = {"heldout": held, "loss_first": 1.0, "loss_last": 0.5}
    assert any(
        "not shown to judge better than the length rule (the longer response wins, 0.800" in w
        for w in rm_warnings(result)
    )
    rows = [{**r, "chars": [b, a]} for r, (a, b) in zip(rows, chars)]  # now the shorter one is chosen
    assert accuracy(rows)["length_rule"]["rule"] == "the shorter response wins"


def test_an_exclude_file_that_matches_no_prompt_is_refused_before_training(tmp_path):
    # the BPO splits' eval prompts are 'user: ... assistant: '; with --dialogue keep the pairs keep HH turns, so
    # none matches and --exclude would leave nothing out while the run's leak check could not see it either
    data, held = hh_and_eval_prompts(tmp_path)
    res = train_tiny_rm(data, tmp_path / "rm", "--exclude", str(held))
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: --exclude") and "0 of its 5 prompts match" in line
    assert "with --dialogue plain 5 would" in line
    assert not (tmp_path / "rm").exists()  # refused before any training
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "something else entirely"}) + "\n")
    res = train_tiny_rm(data, tmp_path / "rm", "--dialogue", "plain", "--exclude", str(other))
    assert res.exit_code == 2 and "0 of its 1 prompts match" in res.output and "leave --exclude out" in res.output
