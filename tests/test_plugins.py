"""A new annotator kind and a new task come from outside the package, with no edit under src/."""

import json
from importlib.metadata import EntryPoint

from conftest import tiny_config
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
