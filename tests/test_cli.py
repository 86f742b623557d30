import json

import pytest
from typer.testing import CliRunner

from bpo.cli import app

runner = CliRunner()


def test_info():
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0 and "presets: quickstart" in res.output


def test_bad_override_is_a_clear_error():
    res = runner.invoke(app, ["train", "train.stepz=3"])
    assert res.exit_code == 2 and "unknown key 'stepz'" in res.output


def test_sft_then_generate_with_the_adapter(tmp_path):
    over = [
        "model.name=tiny-random-llama",
        "device=cpu",
        f"sft_dir={tmp_path / 'sft'}",
        "sft.seeds=[0]",
        "data.sft_examples=4",
        "sft.epochs=1",
        "lora.r=4",
        "lora.alpha=8",
    ]
    res = runner.invoke(app, ["sft", "quickstart", *over])
    assert res.exit_code == 0, res.output
    adapter = tmp_path / "sft" / "member0"
    assert (adapter / "adapter_model.safetensors").exists()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello"}) + "\n" + json.dumps({"prompt": "bye"}) + "\n")
    out = tmp_path / "r.jsonl"
    res = runner.invoke(
        app,
        [
            "generate",
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--adapter",
            str(adapter),
            "--n",
            "2",
            "--sample",
            "quickstart",
            *over,
            "sampling.max_new_tokens=6",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["hello", "bye"] and all(len(r["responses"]) == 2 for r in rows)


# ----------------------------------------------------------------------------- bad input: one line, exit 2


def one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    return lines[0]


TINY = ["model.name=tiny-random-llama", "device=cpu", "lora.r=4", "lora.alpha=8"]


def test_eval_refuses_bad_arguments_before_any_work(tmp_path):
    out = ["--out", str(tmp_path / "ev")]
    assert "--judge 'htp'" in one_error_line(runner.invoke(app, ["eval", *TINY, *out, "--judge", "htp"]))
    line = one_error_line(runner.invoke(app, ["eval", *TINY, *out, "--against", str(tmp_path / "nope.jsonl")]))
    assert "--against" in line and "nope.jsonl" in line
    assert "--judge http needs judge.url" in one_error_line(
        runner.invoke(app, ["eval", *TINY, *out, "--judge", "http"])
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    line = one_error_line(runner.invoke(app, ["eval", *TINY, "--out", str(run)]))
    assert "training run folder" in line and "eval.json" in line
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi", "label": "ho"}) + "\n")
    line = one_error_line(runner.invoke(app, ["eval", *TINY, f"data.eval={prompts}", *out]))
    assert "quickstart judge scores only the embedded task's posts" in line
    assert not (tmp_path / "ev" / "eval.json").exists()


def test_train_refuses_missing_or_mismatched_data_before_loading(tmp_path):
    base = [*TINY, f"output_dir={tmp_path / 'run'}"]
    line = one_error_line(runner.invoke(app, ["train", *base, f"data.eval={tmp_path / 'missing.jsonl'}"]))
    assert line.startswith("error: data.eval = ") and "no such file" in line
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi", "label": "ho"}) + "\n")
    line = one_error_line(runner.invoke(app, ["train", *base, f"data.train={prompts}"]))
    assert "quickstart judge" in line and "annotator.kind=reward_model" in line
    line = one_error_line(runner.invoke(app, ["train", *TINY, "output_dir=/proc/no/such/run"]))
    assert "cannot be created" in line
    assert not (tmp_path / "run").exists()


def test_model_and_adapter_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "q1", "prompt": "hello"}) + "\n")
    gen = ["generate", "--prompts", str(prompts), "--out", str(tmp_path / "r.jsonl")]
    line = one_error_line(runner.invoke(app, [*gen, "model.name=someone/not-here-7b"]))
    assert "cannot load model 'someone/not-here-7b'" in line and "hf download" in line
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"model_type": "no-such-arch"}')
    assert "cannot load a causal LM from folder" in one_error_line(
        runner.invoke(app, [*gen, f"model.name={not_a_model}"])
    )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny-random-llama"}')
    line = one_error_line(runner.invoke(app, [*gen, "--adapter", str(adapter), "model.name=smollm2-135m-instruct"]))
    assert "trained on base model 'tiny-random-llama'" in line and "model.name=tiny-random-llama" in line
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    line = one_error_line(runner.invoke(app, ["generate", "--prompts", str(empty), "--out", "x.jsonl", *TINY]))
    assert "no prompts" in line


def test_generate_keeps_the_prompt_ids(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"mine-{i}", "prompt": f"q{i}"}) + "\n" for i in range(2)))
    out = tmp_path / "r.jsonl"
    res = runner.invoke(
        app, ["generate", "--prompts", str(prompts), "--out", str(out), *TINY, "sampling.max_new_tokens=3"]
    )
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["mine-0", "mine-1"]


@pytest.mark.slow
def test_a_failing_run_inside_compare_says_why(tmp_path):
    grid = ["compare", "--out", str(tmp_path / "grid"), "--methods", "bpo-fT", "--seeds", "0"]
    # refused up front, before any run starts
    line = one_error_line(runner.invoke(app, [*grid, *TINY, f"data.eval={tmp_path / 'missing.jsonl'}"]))
    assert line.startswith("error: data.eval = ")
    # a fault only the run itself meets: its own error line is the grid's
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"model_type": "no-such-arch"}')
    res = runner.invoke(app, [*grid, f"model.name={not_a_model}", "device=cpu"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: bpo-fT seed 0 failed (exit 2): cannot load a causal LM from folder")


def test_adapters_record_their_base_model(tmp_path):
    over = [*TINY, f"sft_dir={tmp_path / 'sft'}", "sft.seeds=[0]", "data.sft_examples=4", "sft.epochs=1"]
    assert runner.invoke(app, ["sft", "quickstart", *over]).exit_code == 0
    config = json.loads((tmp_path / "sft" / "member0" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-random-llama"


@pytest.mark.slow
def test_a_redirected_run_logs_a_line_per_step_while_it_runs(tmp_path):
    # stdout/stderr to a file (nohup, CI, a cluster job): the log must show each step as it happens,
    # not only the header until the run ends
    import os
    import subprocess
    import sys
    import time

    from conftest import tiny_config

    log = tmp_path / "log.txt"
    over = tiny_config(tmp_path, **{"train.steps": 30, "train.phases": 2, "train.batch_size": 2})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "bpo.cli", "train", "quickstart", *over, "--no-eval"],
                                stdout=f, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        seen_while_running = None
        while proc.poll() is None:
            text = log.read_text()
            if "step 3/30 " in text:
                seen_while_running = text
                break
            time.sleep(0.05)
        running = proc.poll() is None
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert running and seen_while_running, log.read_text()[-3000:]
    text = log.read_text()
    steps = [line for line in text.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == [f"{i}/30" for i in range(1, 31)]
    # a tiny random model samples identical pairs now and then: such a step says it trained nothing
    assert all((" loss " in s or " no pairs to train " in s) for s in steps)
    assert all(" s/step eta " in s and " annotations " in s for s in steps)
    phases = [line for line in text.splitlines() if line.startswith("phase ") and "prompts" in line]
    assert [p.split(":")[0] for p in phases] == ["phase 0", "phase 1"]
    assert "\x1b[" not in text  # no terminal control codes in a log


def test_plain_bpo_shows_help_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [])
    assert res.exit_code == 0
    assert "Start here:" in res.output and "bpo train " in res.output and "bpo config show" in res.output
    for command in ("train", "eval", "compare", "rm", "config"):
        assert f"\n  {command} " in res.output
    assert "``" not in res.output and not (tmp_path / "runs").exists()
    helped = runner.invoke(app, ["--help"])  # bpo --help lacked the start-here lines
    assert helped.exit_code == 0 and "Start here:" in helped.output and "bpo config show" in helped.output


def test_override_syntax_shows_in_command_help():
    res = runner.invoke(app, ["train", "--help"])
    assert "[CONFIG] [section.key=value ...]" in res.output  # rich markup would have eaten the brackets


def test_a_config_error_comes_before_torch_is_imported():
    # the error must not wait for torch/transformers (seconds): it is decided from the config alone
    import subprocess
    import sys

    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom bpo.cli import app\n"
        "res = CliRunner().invoke(app, ['train', 'tldr-local', 'train.steps=0'])\n"
        "assert res.exit_code == 2 and 'train.steps = 0' in res.output, res.output\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported before the error'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_run_aware_generate_and_eval(tmp_path):
    # --run takes the model, adapter, data and judge from the run folder: the same answers as spelling them out
    from conftest import tiny_config

    over = tiny_config(tmp_path)
    res = runner.invoke(app, ["train", "quickstart", *over])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("hello", "summarise this")))
    res = runner.invoke(app, ["generate", "--run", str(run), "--prompts", str(prompts), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    spelled = ["generate", "quickstart", *over, "--adapter", str(run / "final" / "behavior")]
    res = runner.invoke(app, [*spelled, "--prompts", str(prompts), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text()
    res = runner.invoke(app, ["eval", "--run", str(run), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    mine = json.loads((tmp_path / "ev" / "eval.json").read_text())
    own = json.loads((run / "eval.json").read_text())
    assert mine["win_rate"] == own["win_rate_vs_reference"]["win_rate"] and mine["judge"] == own["judge"]
    # an adapter trained on another base model is refused in one line
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((run / "final" / "behavior" / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "some/other-model"}))
    res = runner.invoke(app, ["generate", "--run", str(run), "--adapter", str(other), "--prompts", str(prompts),
                              "--out", str(tmp_path / "c")])  # fmt: skip
    assert res.exit_code == 2 and "trained on base model 'some/other-model'" in res.output
    res = runner.invoke(app, ["eval", "--run", str(tmp_path), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and res.output.startswith("error:")


def test_export_merged_and_adapter(tmp_path):
    # the merged folder is a plain transformers model with the same outputs as base + adapter
    import torch
    from conftest import tiny_config
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bpo.model.policy import load_policy

    res = runner.invoke(app, ["train", "quickstart", *tiny_config(tmp_path)])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    res = runner.invoke(app, ["export", str(run), "--merged", str(tmp_path / "m"), "--adapter", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    base = PeftModel.from_pretrained(load_policy("tiny-random-llama", "cpu").model, str(tmp_path / "a")).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, base(ids).logits, atol=1e-4, rtol=1e-4)
        a = merged.generate(ids, max_new_tokens=8, do_sample=False)
        b = base.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)
    card = (tmp_path / "m" / "README.md").read_text()
    assert "base_model: tiny-random-llama" in card and "F=2 T=6 B=4 K=1" in card and "win rate vs start" in card
    assert (tmp_path / "a" / "README.md").read_text().startswith("---\nbase_model: tiny-random-llama")
    card = (run / "final" / "README.md").read_text()  # PEFT's was an empty template
    assert (
        "base_model: tiny-random-llama" in card and "AutoPeftModelForCausalLM" in card and "win rate vs start" in card
    )
    res = runner.invoke(app, ["export", str(tmp_path / "a"), "--merged", str(tmp_path / "z")])
    assert res.exit_code == 2 and "no final/behavior adapter" in res.output

    # never delete what bpo did not write (export --adapter RUN replaced a whole run with 3 files)
    ledger = (run / "annotations.jsonl").read_bytes()
    for target in (run, run / "final", run / "final" / "behavior", tmp_path):
        res = runner.invoke(app, ["export", str(run), "--adapter", str(target)])
        assert res.exit_code == 2 and "which is being read" in res.output, (target, res.output)
    assert (run / "annotations.jsonl").read_bytes() == ledger and (run / "final" / "member0").is_dir()
    mine = tmp_path.parent / f"{tmp_path.name}-mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    for target, other in ((mine, None), (tmp_path / "m", "adapter")):  # a user's folder; a merged export
        res = runner.invoke(app, ["export", str(run), f"--{other or 'adapter'}", str(target)])
        assert res.exit_code == 2 and "bpo replaces only its own output" in res.output, res.output
    assert (mine / "notes.txt").read_text() == "keep me"
    res = runner.invoke(app, ["export", str(run), "--adapter", str(tmp_path / "a")])  # its own export: replaced
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(run), "--adapter", str(mine), "--force"])
    assert res.exit_code == 0 and (mine / "adapter_config.json").exists() and not (mine / "notes.txt").exists()
    assert not [p for p in mine.parent.iterdir() if ".bpo-" in p.name]  # no temp or aside folder left


@pytest.mark.slow
def test_a_logged_run_keeps_each_result_line_whole(tmp_path):
    """Piped output was hard-wrapped at 80 columns: the result lines broke mid-interval in a log file or CI."""
    import os
    import re
    import subprocess
    import sys

    from conftest import tiny_config

    log = tmp_path / "log.txt"
    over = tiny_config(tmp_path, **{"train.steps": 2, "train.phases": 1})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "bpo.cli", "train", "quickstart", *over],
                              stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600)  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    lines = text.splitlines()
    score = [x for x in lines if x.startswith("score by ")]
    assert len(score) == 1 and re.search(r"-> trained -?\d+\.\d\d \[-?\d+\.\d\d, -?\d+\.\d\d\]$", score[0])
    assert any(re.fullmatch(r"improvement .+ \(95% bootstrap\)", x) for x in lines)
    win = [x for x in lines if x.startswith("win rate vs start ")]
    assert len(win) == 1 and win[0].endswith(")") and "ties as half" in win[0] and len(win[0]) > 80
