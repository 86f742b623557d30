"""Every run writes report.md + curves.png; bpo report overlays runs."""

import pytest
from conftest import tiny_config
from PIL import Image
from typer.testing import CliRunner

from bpo.cli import app

runner = CliRunner()


def _run(tmp_path, name: str, **over) -> str:
    args = tiny_config(tmp_path / name, **{"sft_dir": str(tmp_path / "sft"), **over})
    res = runner.invoke(app, ["train", "quickstart", *args])
    assert res.exit_code == 0, res.output
    return str(tmp_path / name / "run")


@pytest.mark.slow
def test_a_run_reports_itself_and_two_runs_overlay(tmp_path):
    bpo = _run(tmp_path, "bpo")
    report = (tmp_path / "bpo" / "run" / "report.md").read_text()
    assert "BPO: DPO F=2 T=6 B=4 K=1" in report and "judge `quickstart-judge`" in report
    assert "win rate vs start" in report and "![curves](curves.png)" in report
    w, h = Image.open(tmp_path / "bpo" / "run" / "curves.png").size
    assert w > 400 and h > 200
    offline = _run(tmp_path, "offline", **{"train.phases": 1})
    res = runner.invoke(app, ["report", bpo, offline, "--out", str(tmp_path / "both")])
    assert res.exit_code == 0, res.output
    both = (tmp_path / "both" / "report.md").read_text()
    assert "offline (F = 1)" in both and "BPO: DPO F=2" in both and both.count("## ") == 2
    assert (tmp_path / "both" / "curves.png").exists()
    # several runs need --out; a folder that is not a run is one error line
    res = runner.invoke(app, ["report", bpo, offline])
    assert res.exit_code == 2 and "need --out" in res.output
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and res.output.startswith("error:") and "not a bpo run folder" in res.output


def test_a_run_that_trained_on_nothing_and_a_win_rate_of_ties_are_warned(tmp_path):
    """train.lr=1e3 made every pair a tie from step 5, yet 'win rate vs start 1.00' was printed without a word."""
    import json

    judge = tmp_path / "flat.py"
    judge.write_text("def score(record, response):\n    return 0.0\n")  # every pair a tie, every eval item too
    over = tiny_config(tmp_path, **{"annotator.kind": "callable", "annotator.callable": f"{judge}:score"})
    res = CliRunner().invoke(app, ["train", "quickstart", *over])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    warned = json.loads((run / "run.json").read_text())["warnings"]
    assert any("6 of 6 steps trained on no pair" in w for w in warned)
    assert any("win rate vs start rests mostly on ties (4 of 4 prompts)" in w for w in warned)
    for w in warned:
        assert w in res.output and w in (run / "report.md").read_text()


def test_garbage_in_a_run_folder_is_one_line_naming_the_file(tmp_path):
    """Garbage in metrics.jsonl, eval.json or run.json was a one-line error that named no file."""
    import json

    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "quickstart", *tiny_config(tmp_path, **{"train.steps": 2}), "--no-eval"])
    assert res.exit_code == 0, res.output
    for name, garbage in (("eval.json", "{oops"), ("run.json", "[1]"), ("metrics.jsonl", '"a string"\n')):
        keep = (run / name).read_text() if (run / name).exists() else None
        (run / name).write_text(garbage)
        res = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r")])
        last = res.output.strip().splitlines()[-1]
        assert res.exit_code == 2 and last.startswith("error: ") and name in last, (name, res.output)
        if keep is None:
            (run / name).unlink()
        else:
            (run / name).write_text(keep)
    assert json.loads((run / "run.json").read_text())["steps"] == 2


def test_the_code_version_names_the_commit_of_a_git_checkout(monkeypatch):
    import subprocess
    from pathlib import Path

    import pytest

    import bpo

    root = Path(bpo.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("bpo is not installed from a git checkout here")
    git = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
    dirty = git("status", "--porcelain", "--", "src")
    want = f"bpo {bpo.__version__} {git('rev-parse', '--short=7', 'HEAD')}"
    want += " +uncommitted changes in src/" if dirty else ""
    assert bpo.code_version() == want
    # asked once per process: a run that finishes after a later commit still names the code it loaded
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("git asked again")))
    assert bpo.code_version() == want


def test_grid_curves_draw_each_seed_under_the_mean(tmp_path, monkeypatch):
    """A grid's curves show the spread over seeds (a drifting seed must be visible, not averaged away)."""
    import matplotlib.pyplot as plt

    from bpo.eval.report import plot

    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    runs = [[{"step": s, "phase": 0, "loss": 0.7 - 0.01 * s * seed} for s in (1, 2, 3)] for seed in range(3)]
    plot({"a": runs, "b": runs[:2]}, tmp_path / "c.png", keys=[("loss", "loss")], each_run=True)
    lines = drawn[0].axes[0].get_lines()
    assert len(lines) == 3 + 1 + 2 + 1  # every seed, then the mean, per method
    means = [ln for ln in lines if ln.get_label() in ("a", "b")]
    assert [list(ln.get_ydata()) for ln in means][0] == pytest.approx([0.69, 0.68, 0.67])
    thin = [ln for ln in lines if ln not in means]
    assert {round(ln.get_alpha(), 2) for ln in thin} == {0.25} and all(ln.get_label().startswith("_") for ln in thin)
    assert (tmp_path / "c.png").stat().st_size > 1000
