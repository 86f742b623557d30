"""Faults in what a run keeps and shares: its ledger, its folder's one writer, leftovers, the SFT cache.
Nothing paid for is lost or bought twice, and what cannot be trusted is refused in one line before any work.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from faults import ENV, _flip, args, assert_same, cfg_of, held_run, resume, snapshot, stopped_run

from bpo.io import FolderInUseError, FolderLock
from bpo.train.ledger import AnnotationLog, LedgerError
from bpo.train.loop import train

# every test here runs tiny training runs end to end (10-35 s each); scripts/test.sh --fast leaves them out
pytestmark = pytest.mark.slow


def _ledger_lines(run: Path) -> list[str]:
    return (run / "annotations.jsonl").read_text().splitlines(keepends=True)


def _change_first_judgement(lines: list[str]) -> list[str]:
    first = next(i for i, x in enumerate(lines) if '"choice": 0' in x)
    return lines[:first] + [lines[first].replace('"choice": 0', '"choice": 1')] + lines[first + 1 :]


LEDGER_DAMAGE = {  # line 0 is the header
    "a duplicated line": (lambda ls: ls[:3] + [ls[2]] + ls[3:], "appears twice"),
    "a deleted line": (lambda ls: ls[:2] + ls[3:], "is missing while later pairs are there"),
    "a changed judgement": (_change_first_judgement, "differs from what checkpoint"),
    "the whole ledger": (None, "is missing, but checkpoint"),
}


@pytest.mark.parametrize("damage", list(LEDGER_DAMAGE))
def test_a_damaged_ledger_is_refused_not_trained_on(tmp_path, reference, damage):
    run = stopped_run(tmp_path, reference["sft"], at_step=5)
    edit, message = LEDGER_DAMAGE[damage]
    if edit is None:
        (run / "annotations.jsonl").unlink()
    else:
        (run / "annotations.jsonl").write_text("".join(edit(_ledger_lines(run))))
    before = (run / "metrics.jsonl").read_text()
    res = resume(run)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in res.stderr
    assert (run / "metrics.jsonl").read_text() == before  # nothing trained


def test_a_new_run_with_other_settings_refuses_the_old_ledger(tmp_path, reference):
    run = stopped_run(tmp_path, reference["sft"], at_step=1)
    assert not (run / "checkpoints").exists()  # a ledger without a checkpoint: the next run is a fresh start
    cfg = cfg_of(tmp_path, sft_dir=reference["sft"], **{"train.seed": 7, "annotator.kind": "callable"})
    with pytest.raises(LedgerError, match=r"annotator\.kind: 'quickstart' in the ledger, 'callable' now.*train\.seed"):
        train(cfg, evaluate=False)


def test_a_new_run_with_the_same_settings_reuses_the_judgements(tmp_path, reference, monkeypatch):
    run = stopped_run(tmp_path, reference["sft"], at_step=1)
    bought = AnnotationLog(run / "annotations.jsonl").judged
    assert not (run / "checkpoints").exists()
    calls = []
    from bpo.annotators import ScoreAnnotator

    original = ScoreAnnotator.annotate
    monkeypatch.setattr(ScoreAnnotator, "annotate", lambda self, p, q: calls.append(len(q)) or original(self, p, q))
    train(cfg_of(tmp_path, sft_dir=reference["sft"]), evaluate=False)
    assert bought > 0 and sum(calls) == reference_judged(reference) - bought  # phase 1's pairs are not bought again


def reference_judged(reference: dict) -> int:
    return sum(1 for e in reference["snapshot"]["ledger"][1:] if not e["identical"])


def test_a_second_process_on_the_run_folder_is_refused_naming_the_holder(tmp_path, reference):
    cfg = cfg_of(tmp_path, sft_dir=reference["sft"])
    with FolderLock(cfg.output_dir):
        with pytest.raises(FolderInUseError, match=rf"run folder {cfg.output_dir} is in use by pid {os.getpid()}"):
            train(cfg, evaluate=False)
    assert not (Path(cfg.output_dir) / "annotations.jsonl").exists()


def test_two_processes_started_together_write_once(tmp_path, reference):
    """A second bpo train on a run folder in use is refused, naming the holder. The first one is held mid-run while
    the second starts (two started together raced: on a loaded machine the first could end before the second
    looked, and the second then met a finished run)."""
    train = ["train", "--no-eval", *args(tmp_path, sft_dir=reference["sft"])]
    first, go = held_run(tmp_path, 2, train)
    second = subprocess.run([sys.executable, "-m", "bpo.cli", *train], env=ENV, capture_output=True, text=True)
    go.write_text("go")
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert second.returncode == 2
    assert f"is in use by pid {first.pid}" in second.stderr.strip().splitlines()[-1]
    assert_same(snapshot(tmp_path / "run"), reference["snapshot"])  # every judgement once, every step once


def test_leftover_temp_folders_are_removed_on_the_next_start(tmp_path, reference):
    run = stopped_run(tmp_path, reference["sft"], at_step=5)
    leftovers = [run / "checkpoints" / ".tmp-abc", run / ".final-xyz"]
    for folder in leftovers:
        (folder / "adapters").mkdir(parents=True)
    (run / ".eval.json.bpo-tmp").write_text("{")  # write_text_atomic's own temp name
    (run / "notes.tmp").write_text("mine")  # a user's file: a start used to delete every *.tmp
    assert resume(run).returncode == 0
    assert not any(p.exists() for p in leftovers) and not (run / ".eval.json.bpo-tmp").exists()
    assert (run / "notes.tmp").read_text() == "mine"


def test_resume_of_a_finished_run_does_nothing(tmp_path, reference):
    run = stopped_run(tmp_path, reference["sft"], at_step=7)
    assert resume(run).returncode == 0
    stamps = {p: p.stat().st_mtime_ns for p in (run / "run.json", run / "metrics.jsonl", run / "final")}
    res = resume(run)
    assert res.returncode == 0 and "is finished" in res.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_sft_leftovers_are_removed_and_the_cache_reused(tmp_path):
    from typer.testing import CliRunner

    from bpo.cli import app

    sft = tmp_path / "sft"
    (sft / ".member0-x1y2").mkdir(parents=True)  # a member save cut short by a kill
    over = [f"sft_dir={sft}", "model.name=tiny-random-llama", "device=cpu", "sft.seeds=[0]", "data.sft_examples=4"]
    assert CliRunner().invoke(app, ["sft", "quickstart", *over, "sft.epochs=1", "lora.r=4"]).exit_code == 0
    assert not (sft / ".member0-x1y2").exists() and (sft / "member0" / "adapter_model.safetensors").exists()


def test_a_damaged_sft_cache_member_is_trained_again_not_trained_from(tmp_path, reference):
    """Flipped bytes in an SFT cache adapter were trained from, exit 0."""
    import shutil

    sft = tmp_path / "sft"
    shutil.copytree(reference["sft"], sft)
    _flip(sft / "member0" / "adapter_model.safetensors")
    cmd = [sys.executable, "-m", "bpo.cli", "train", "--no-eval", *args(tmp_path, sft_dir=sft)]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "member SFT" in res.stderr  # trained again
    assert_same(snapshot(tmp_path / "run"), reference["snapshot"])


def test_an_sft_dir_made_with_other_settings_is_refused(tmp_path, reference):
    """A reused sft_dir with other SFT settings was taken as is (the ledger then recorded settings never used)."""
    import shutil

    sft = tmp_path / "sft"
    shutil.copytree(reference["sft"], sft)
    cmd = [sys.executable, "-m", "bpo.cli", "train", "--no-eval", *args(tmp_path, sft_dir=sft), "sft.lr=0.5"]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert res.returncode == 2 and "holds SFT adapters made with other settings" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "annotations.jsonl").exists()  # refused before any work


def test_a_run_that_failed_before_its_first_judgement_does_not_block_its_folder(tmp_path):
    """A callable path without ':score' left a ledger header; the corrected command was refused ("its 0
    judgements are not this run's")."""
    judge = tmp_path / "judge.py"
    judge.write_text("def score(record, response):\n    return float(len(response))\n")
    base = args(tmp_path, **{"annotator.kind": "callable", "train.steps": 2, "train.phases": 1})
    cmd = [sys.executable, "-m", "bpo.cli", "train", "--no-eval", *base]
    wrong = subprocess.run([*cmd, f"annotator.callable={judge}:scor"], env=ENV, capture_output=True, text=True)
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    right = subprocess.run([*cmd, f"annotator.callable={judge}:score"], env=ENV, capture_output=True, text=True)
    assert right.returncode == 0, right.stderr[-2000:]
