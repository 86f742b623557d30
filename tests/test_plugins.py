"""A new annotator kind and a new task come from outside the package, with no edit under src/."""

import importlib
import json
import math
from importlib.metadata import EntryPoint

import pytest
import torch
from conftest import adapters, tiny_config
from typer.testing import CliRunner

import bpo.registry
from bpo.cli import app
from bpo.config import load_config
from bpo.errors import ConfigError
from bpo.registry import Registry
from bpo.train.loop import train


def test_a_kind_and_a_task_registered_outside_the_package_train_a_run(tmp_path):
    import plugin_kinds

    over = {f"data.{r}": "echo" for r in ("train", "sft", "eval")}
    cfg = load_config(None, tiny_config(tmp_path, **over, **{"annotator.kind": "echo_judge"}))
    result = train(cfg, evaluate=True)
    assert result["judge"] == "echo-judge"
    rows = [json.loads(x) for x in (tmp_path / "run" / "annotations.jsonl").read_text().splitlines()[1:]]
    assert len(rows) == 6 * 4
    records = {r.id: r for r in plugin_kinds.prompts(cfg.data, "train", 24)}
    judged = [r for r in rows if r["choice"] is not None]
    assert judged, "no pair was judged"
    for r in judged:  # every verdict is the plugin's rule, not some other judge's
        a, b = (plugin_kinds.score(records[r["prompt_id"]], t) for t in r["responses"])
        assert r["choice"] == int(b > a)
    # its judge is tied to its task, as the built-in quickstart judge is to the quickstart
    other = load_config(
        None, tiny_config(tmp_path, **{**over, "data.eval": "quickstart", "annotator.kind": "echo_judge"})
    )
    try:
        other.check_sources()
    except ConfigError as err:
        assert "the echo_judge judge scores only the echo task's prompts" in str(err)
    else:
        raise AssertionError("a task's judge was asked about another task's prompts")
    listed = CliRunner().invoke(app, ["config", "kinds"]).output
    assert "annotator.kind=echo_judge: the echo task's exact judge" in listed and "data.train/sft/eval=echo" in listed


def test_an_unknown_kind_is_one_line_listing_the_known_ones():
    res = CliRunner().invoke(app, ["config", "show", "annotator.kind=nope"])
    assert res.exit_code == 2
    assert res.output.startswith("error: annotator.kind = 'nope': unknown; known: callable, ")
    for kind in ("human", "llm_judge", "pairwise", "quickstart", "reward_model"):
        assert kind in res.output


def test_installed_plugins_load_from_the_entry_point_group(monkeypatch):
    seen = []
    monkeypatch.setattr(
        bpo.registry,
        "entry_points",
        lambda group: seen.append(group) or [EntryPoint("echo", "plugin_kinds", group)],
    )
    fresh = Registry("x", ())
    assert "anything" not in fresh  # loading it imported the plugin named by the entry point
    assert seen == ["bpo.plugins"]
    import sys

    assert "plugin_kinds" in sys.modules


@pytest.fixture()
def plugins():
    """Registers the plugin loss (robust) and reference rule (every_k) for one test, then takes them out again:
    a registry is global, and a part left in it changes what other tests in the same worker see."""
    registries = (bpo.registry.LOSSES, bpo.registry.REFERENCES)
    saved = {r: dict(zip(r.names(), map(r.get, r.names()))) for r in registries}  # the built-ins loaded first
    for name in ("plugin_losses", "plugin_references"):  # registering is what importing the module does
        importlib.reload(importlib.import_module(name))
    yield
    for registry, entries in saved.items():
        registry._entries.clear()
        registry._entries.update(entries)


def test_a_loss_registered_outside_the_package_trains_with_its_own_hyper_parameter(tmp_path, plugins):

    def run(name: str, **over) -> list[dict]:
        base = {"train.steps": 3, "train.phases": 1, "output_dir": str(tmp_path / name), **over}
        seen = []
        train(load_config(None, tiny_config(tmp_path, **base)), evaluate=False, on_step=lambda r, s, m: seen.append(m))
        return seen

    dpo = run("dpo")
    same = run("robust0", **{"train.loss": "robust", "train.loss_args.flip_rate": 0.0})
    flipped = run("robust2", **{"train.loss": "robust", "train.loss_args.flip_rate": 0.2})
    assert [m["loss"] for m in same] == [m["loss"] for m in dpo]  # eps = 0 is DPO, to the bit
    assert flipped[0]["loss"] == dpo[0]["loss"]  # Delta = 0 at the phase start: log 2 whatever eps
    assert flipped[-1]["loss"] != dpo[-1]["loss"]  # the hyper-parameter reaches the loss
    listed = CliRunner().invoke(app, ["config", "kinds"]).output
    assert "train.loss=robust: robust DPO (arXiv 2403.00409), summed log-probs; reads train.reference; " \
        "train.beta, train.loss_args.flip_rate" in listed  # fmt: skip
    for bad, says in (
        ({"train.loss_args.flip_rate": 0.5}, "train.loss_args.flip_rate = 0.5: must be a finite number in [0.0, 0.5)"),
        ({"train.loss_args.flip": 0.1}, "train.loss_args: ['flip'] not taken by train.loss=robust (flip_rate)"),
    ):
        res = CliRunner().invoke(app, ["config", "show", "train.loss=robust", *[f"{k}={v}" for k, v in bad.items()]])
        assert res.exit_code == 2 and res.output.strip() == f"error: {says}", res.output


class Crash(Exception):
    pass


@pytest.mark.slow
def test_a_reference_rule_registered_outside_the_package_is_checkpointed_and_resumes_exactly(tmp_path, plugins):

    over = {"train.reference": "every_k", "train.reference_args.k": 2, "train.phases": 1, "train.save_every": 2}

    def config(name: str):
        return load_config(None, tiny_config(tmp_path, **over, **{"output_dir": str(tmp_path / name)}))

    seen = []
    train(config("whole"), evaluate=False, on_step=lambda r, s, m: seen.append(m))

    def crash_after_step_5(run, step, metrics):
        if step == 4:  # step 5 done; the last checkpoint is step 4's, whose reference the rule moved after step 4
            raise Crash

    try:
        train(config("killed"), evaluate=False, on_step=crash_after_step_5)
    except Crash:
        pass
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-000004" / "adapters"
    assert (checkpoint / "everyk" / "adapter_model.safetensors").exists()  # the rule's state is saved
    resumed = []
    train(config("killed"), resume=True, evaluate=False, on_step=lambda r, s, m: resumed.append(m))
    assert [m["loss"] for m in resumed] == [m["loss"] for m in seen[4:]]
    want, got = adapters(tmp_path / "whole" / "final"), adapters(tmp_path / "killed" / "final")
    assert want.keys() == got.keys() and want
    for key in want:
        assert torch.equal(want[key], got[key]), key
    # the rule moves the reference: the loss at step 3 (k = 2: pi_ref = the policy after step 2) is log 2
    assert abs(seen[2]["loss"] - math.log(2)) < 1e-6 and abs(seen[1]["loss"] - math.log(2)) > 1e-4
    listed = CliRunner().invoke(app, ["config", "kinds"]).output
    assert "train.reference=every_k: pi_ref = the policy, copied every k steps; pi_ref is adapter everyk, " \
        "train.reference_args.k" in listed  # fmt: skip
    res = CliRunner().invoke(app, ["config", "show", "train.reference=every_k", "train.reference_args.j=2"])
    assert res.exit_code == 2 and "train.reference_args: ['j'] not taken by train.reference=every_k (k)" in res.output


def test_a_plugins_empty_argument_mappings_leave_the_ledger_header_as_it_was(request):
    # ledgers written before train.loss_args / reference_args existed, or while sampling.do_sample did, still resume
    from bpo.train.ledger import ledger_settings

    header = ledger_settings(load_config(None, ["model.name=tiny-random-llama"]), 1)
    plain = header["train"]
    assert "loss_args" not in plain and "reference_args" not in plain
    assert header["sampling"]["do_sample"] is True  # as ledgers wrote it while sampling.do_sample was a key
    request.getfixturevalue("plugins")  # registers train.loss=robust from here on

    over = ["model.name=tiny-random-llama", "train.loss=robust", "train.loss_args.flip_rate=0.1"]
    assert ledger_settings(load_config(None, over), 1)["train"]["loss_args"] == {"flip_rate": 0.1}
