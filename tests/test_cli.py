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
