"""Config loading and validation: every bad value is refused, naming the key, before any work."""

import pytest
from typer.testing import CliRunner

from bpo.cli import app
from bpo.config import load_config
from bpo.errors import ConfigError


def test_config_errors_name_the_key(tmp_path):
    from bpo.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ConfigError, match=r"train.loss = 'kto': unknown; known: dpo, ipo, simpo, slic"):
        load_config(None, ["train.loss=kto"])
    with pytest.raises(ConfigError, match="train: steps: expected int, got 'many'"):
        load_config(None, ["train.steps=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: 8\n  phase: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train: unknown key 'phase'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must be between 1 and train.steps"):
        load_config(None, ["train.steps=4", "train.phases=5"])
    with pytest.raises(ConfigError, match="no such config file or preset"):
        load_config("nope.yaml")


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.beta=inf", "train.beta"),
        ("train.beta=nan", "train.beta"),
        ("train.beta=0", "train.beta"),
        ("train.lr=0", "train.lr"),
        ("train.lr=-1e-4", "train.lr"),
        ("train.steps=0", "train.steps"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.grad_clip=inf", "train.grad_clip"),
        ("train.adam_eps=0", "train.adam_eps"),
        ("train.weight_decay=-0.1", "train.weight_decay"),
        ("train.label_smoothing=0.5", "train.label_smoothing"),
        ("train.ema_alpha=0", "train.ema_alpha"),
        ("train.ref_model_mixup_alpha=0", "train.ref_model_mixup_alpha"),
        ("train.ref_model_sync_steps=0", "train.ref_model_sync_steps"),
        ("train.simpo_gamma=-1", "train.simpo_gamma"),
        ("train.save_every=-1", "train.save_every"),
        ("data.eval_examples=0", "data.eval_examples"),
        ("data.sft_examples=0", "data.sft_examples"),
        ("data.max_prompt_tokens=0", "data.max_prompt_tokens"),
        ("sampling.max_new_tokens=0", "sampling.max_new_tokens"),
        ("sampling.temperature=0", "sampling.temperature"),
        ("sampling.top_p=0", "sampling.top_p"),
        ("sampling.top_k=-1", "sampling.top_k"),
        ("sampling.batch_size=0", "sampling.batch_size"),
        ("sft.batch_size=0", "sft.batch_size"),
        ("sft.epochs=-1", "sft.epochs"),
        ("sft.lr=nan", "sft.lr"),
        ("sft.seeds=[0,0]", "sft.seeds"),
        ("sft.seeds=[]", "sft.seeds"),
        ("lora.r=0", "lora.r"),
        ("lora.dropout=1", "lora.dropout"),
        ("eval.max_new_tokens=0", "eval.max_new_tokens"),
        ("eval.bootstrap=0", "eval.bootstrap"),
    ],
)
def test_bad_numbers_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key} = .*: must be"):
        load_config("quickstart", [override])


def test_bad_number_on_the_command_line_is_one_line_exit_2():
    res = CliRunner().invoke(app, ["train", "train.beta=inf"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: train.beta = inf: must be a positive finite number"]


def test_presets_load_and_the_paper_tasks_sample_as_its_code():
    for name in ("tldr", "hh-helpful", "hh-harmless", "tldr-local", "hh-helpful-local", "hh-harmless-local"):
        s = load_config(name).sampling
        assert (s.temperature, s.top_k, s.top_p) == (1.0, 0, 0.95), name
        t = load_config(name).train
        assert (t.weight_decay, t.adam_eps) == (0.0, 1e-6), name  # transformers.AdamW in the paper's code
    q = load_config("quickstart").train
    assert (q.weight_decay, q.adam_eps) == (0.01, 1e-8)  # pinned: its published figures were measured so


@pytest.mark.parametrize("preset", ["quickstart", "tldr-local", "hh-harmless"])
def test_config_show_round_trips_and_documents_every_field(tmp_path, preset):
    import dataclasses

    from bpo.config import Config
    from bpo.fields import keys, show

    cfg = load_config(preset, ["train.phases=3", "sft.seeds=[4,5]", "data.max_prompt_tokens=none"])
    shown = tmp_path / "shown.yaml"
    res = CliRunner().invoke(
        app, ["config", "show", preset, "train.phases=3", "sft.seeds=[4,5]", "data.max_prompt_tokens=none"]
    )
    assert res.exit_code == 0, res.output
    assert res.output == show(cfg)
    shown.write_text(res.output)
    assert load_config(shown) == cfg  # what it prints loads back to the same config
    keys = keys(Config())
    assert len(keys) == sum(
        len(dataclasses.fields(v)) if dataclasses.is_dataclass(v) else 1
        for v in (getattr(cfg, f.name) for f in dataclasses.fields(cfg))
    )
    assert all(not k.endswith("# ") for k in keys)  # every field has its help text


@pytest.mark.parametrize(
    "override, said",
    [
        ("train.beta=[0.1", "override 'train.beta=[0.1': train: beta: expected float, got '[0.1'"),
        ("model.name=!!python/object:os.system", "YAML tags are not taken"),
        ("sft.seeds=[0, 1", "sft: seeds: '[0, 1' is not a list; write [a, b] or a,b"),
        (
            "data.prompt_template=Q: {x} {prompt}",
            "data.prompt_template = 'Q: {x} {prompt}': KeyError('x') is not a field",
        ),
        ("data.prompt_template=Q: {prompt", "data.prompt_template = 'Q: {prompt'"),
    ],
)
def test_a_malformed_override_is_one_line_not_a_traceback(override, said):
    res = CliRunner().invoke(app, ["train", override])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], res.output


@pytest.mark.parametrize("garbage", [b"model: [unclosed\n", b"- a list\n- not a mapping\n", b"\xff\xfe\x00binary"])
def test_a_garbage_config_on_resume_is_one_line(tmp_path, garbage):
    (tmp_path / "config.yaml").write_bytes(garbage)
    res = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "config.yaml" in lines[0] and "restore" in lines[0], res.output


def test_a_key_that_is_gone_is_refused_saying_what_to_write_unless_a_saved_config_holds_its_default(tmp_path):
    res = CliRunner().invoke(app, ["config", "show", "sampling.do_sample=false"])
    assert res.exit_code == 2
    assert res.output.strip() == (
        "error: override 'sampling.do_sample=false': sampling.do_sample is gone; write nothing: training always "
        "samples, evaluation and bpo generate decode greedily"
    )
    saved = tmp_path / "config.yaml"  # a run's config.yaml from before: the old keys at their defaults
    saved.write_text(
        "sampling: {do_sample: true}\nannotator: {url: '', judge_template: ''}\neval: {judge_timeout: 60.0}\n"
    )
    assert load_config(saved).judge.timeout == 60.0
    saved.write_text("eval: {judge_timeout: 5}\n")
    with pytest.raises(ConfigError, match=r"eval.judge_timeout is gone; write judge.timeout=5$"):
        load_config(saved)
