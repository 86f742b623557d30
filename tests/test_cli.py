import json

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
    assert "needs --judge-url" in one_error_line(runner.invoke(app, ["eval", *TINY, *out, "--judge", "http"]))
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
