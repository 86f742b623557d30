"""Faults that stop a run: kills, Ctrl-C, damaged checkpoints or final/, a planted pickle, a moved folder, a full
disk. Each is recovered exactly (the resumed run equals an uninterrupted one bit for bit) or refused in one line.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import ENV, _flip, _truncate, args, assert_same, held_run, resume, snapshot, stopped_run

# every test here trains, kills and resumes real runs (20-140 s each); scripts/test.sh --fast leaves them out
pytestmark = pytest.mark.slow


def test_random_sigkills_resume_bit_identically(tmp_path, reference):
    """Five runs, each SIGKILLed at random moments (some twice), resumed to the uninterrupted result.

    The first trial's first kill waits for a checkpoint, so at least one kill is known to land after
    one and be resumed from it, however slow the machine; the test counts the kills that did.
    """
    rng = random.Random(2026)
    after_checkpoint = 0  # kills that landed (the process died of them) with a checkpoint on disk
    for trial in range(5):
        folder = tmp_path / f"trial{trial}"
        latest = folder / "run" / "checkpoints" / "latest"
        cmd = [sys.executable, "-m", "bpo.cli", "train", "--no-eval", *args(folder, sft_dir=reference["sft"])]
        kills = 0
        while True:
            proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if trial == 0 and kills == 0:
                while proc.poll() is None and not latest.exists():
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.5))
                kill = True
            else:
                kill = kills < 2 and rng.random() < 0.8
                if kill:
                    time.sleep(rng.uniform(3.0, 12.0))  # start-up is ~3 s; a run is ~10 s
            if kill and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            err = proc.communicate()[1].decode()
            if proc.returncode == 0:
                break
            assert proc.returncode == -signal.SIGKILL, err[-2000:]
            if latest.exists():
                after_checkpoint += 1
                cmd = [sys.executable, "-m", "bpo.cli", "train", "--resume", str(folder / "run"), "--no-eval"]
        assert_same(snapshot(folder / "run"), reference["snapshot"])
    assert after_checkpoint >= 1


DAMAGE = {
    "truncated trainer state": lambda c: _truncate(c / "step-000006" / "trainer_state.pt"),
    "flipped adapter bytes": lambda c: _flip(c / "step-000006" / "adapters" / "member0" / "adapter_model.safetensors"),
    "truncated adapter": lambda c: _truncate(c / "step-000006" / "adapters" / "behavior" / "adapter_model.safetensors"),
    "empty latest": lambda c: (c / "latest").write_text(""),
    "missing folder": lambda c: __import__("shutil").rmtree(c / "step-000006"),
    "no manifest (cut before the end)": lambda c: (c / "step-000006" / "manifest.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, damage):
    run = stopped_run(tmp_path, reference["sft"], at_step=7)
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000004", "step-000006"]
    DAMAGE[damage](checkpoints)
    res = resume(run)
    assert res.returncode == 0, res.stderr[-3000:]
    if damage not in ("empty latest", "missing folder"):
        assert "skipped damaged checkpoint(s) (step-000006" in res.stderr and "resuming from step-000004" in res.stderr
    assert_same(snapshot(run), reference["snapshot"])


class _Planted:
    """A pickle that runs code when unpickled: it would write a file beside itself."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_planted_pickle_in_a_run_folder_is_never_executed(tmp_path, reference):
    """--resume unpickled trainer_state.pt with weights_only=False: code planted in a shared run folder ran."""
    import pickle

    from bpo.train.checkpoint import write_manifest

    run = stopped_run(tmp_path, reference["sft"], at_step=7)
    marker = tmp_path / "pwned"
    newest = run / "checkpoints" / "step-000006"
    state = newest / "trainer_state.pt"
    state.write_bytes(pickle.dumps({"next_step": 6, "payload": _Planted(marker)}))
    write_manifest(newest)  # whoever planted it could rewrite the manifest too
    pickle.loads(state.read_bytes())  # the planted file does run code when unpickled
    assert marker.exists()
    marker.unlink()
    res = resume(run)
    assert not marker.exists(), "the planted pickle ran"
    assert res.returncode == 0, res.stderr[-3000:]
    assert "step-000006: trainer_state.pt holds more than tensors and numbers (not loaded" in res.stderr
    assert_same(snapshot(run), reference["snapshot"])  # resumed exactly from the intact step-000004


def test_a_moved_run_resumes_where_it_now_lies(tmp_path, reference):
    """`mv runs/a runs/b; bpo train --resume runs/b` restarted at step 1 at the old path and bought every
    judgement again."""
    run = stopped_run(tmp_path, reference["sft"], at_step=5)
    moved = tmp_path / "elsewhere" / "b"
    moved.parent.mkdir()
    run.rename(moved)
    ledger_before = (moved / "annotations.jsonl").read_text()
    res = resume(moved)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not run.exists()  # nothing written at the old path
    assert (moved / "annotations.jsonl").read_text().startswith(ledger_before)  # no judgement bought twice
    assert_same(snapshot(moved), reference["snapshot"])
    again = subprocess.run(
        [sys.executable, "-m", "bpo.cli", "train", "--resume", str(moved), f"output_dir={run}"],
        env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 2 and "output_dir cannot be changed on --resume" in again.stderr


def test_no_intact_checkpoint_is_a_one_line_error(tmp_path, reference):
    run = stopped_run(tmp_path, reference["sft"], at_step=5)
    for folder in (run / "checkpoints").glob("step-*"):
        _truncate(folder / "trainer_state.pt")
    res = resume(run)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: no intact checkpoint in") and "Traceback" not in res.stderr


def test_ctrl_c_says_how_to_continue(tmp_path, reference):
    """A real SIGINT to `bpo train` ends it with exit 130 and the resume command; the resumed run is bit-identical.

    The child holds after step 3 until the signal lands: polling for metrics lines and then signalling raced
    the run to its end on a loaded machine, whatever the margin of steps.
    """
    proc, _ = held_run(tmp_path, 3, ["train", "--no-eval", *args(tmp_path, sft_dir=reference["sft"])])
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last == f"interrupted at step 4 of 8; continue with `bpo train --resume {tmp_path / 'run'}`"
    assert resume(tmp_path / "run").returncode == 0
    assert_same(snapshot(tmp_path / "run"), reference["snapshot"])  # every step once, the same bits


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # a zombie is dead


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_compare_takes_its_run_with_it_and_a_rerun_resumes(tmp_path, reference, how):
    """SIGKILL of bpo compare left its child bpo train running, and an immediate rerun was refused as 'in use'."""
    over = [o for o in args(tmp_path) if not o.startswith(("output_dir", "sft_dir"))]
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "bpo.cli", "compare", *over, "--out", str(out), "--methods", "bpo-f2", "--seeds", "0"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = out / "bpo-f2" / "seed0" / ".lock"
    deadline = time.time() + 300
    while not (lock.exists() and lock.read_text().startswith("pid ")) and time.time() < deadline:
        time.sleep(0.05)
    child = int(lock.read_text().split()[1])
    assert child != proc.pid and _alive(child)
    proc.send_signal(how)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the run went on without bpo compare"
    assert not (lock.parent / "run.json").exists(), "the run went on without bpo compare, to its end"
    if how == signal.SIGTERM:
        assert proc.returncode == 130 and "rerun the same command to resume" in proc.stderr.read().decode()
    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / "bpo-f2" / "seed0" / "eval.json").exists()


@pytest.mark.parametrize("damage", ["deleted", "flipped"])
def test_a_lost_or_damaged_final_is_rebuilt_by_resume_and_never_exported(tmp_path, reference, damage):
    """A corrupted final/behavior was evaluated and exported; a deleted final/ was a dead end (export said
    resume, resume said finished)."""
    import shutil

    run = stopped_run(tmp_path, reference["sft"], at_step=7)
    assert resume(run).returncode == 0
    if damage == "deleted":
        shutil.rmtree(run / "final")
    else:
        _flip(run / "final" / "behavior" / "adapter_model.safetensors")
        out = subprocess.run(
            [sys.executable, "-m", "bpo.cli", "export", str(run), "--adapter", str(tmp_path / "exp")],
            env=ENV, capture_output=True, text=True,
        )  # fmt: skip
        assert (
            out.returncode == 2 and "final is not as the run saved it" in out.stderr and not (tmp_path / "exp").exists()
        )
    (run / "report.md").unlink()
    res = resume(run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rebuilding it from the last checkpoint" in res.stderr + res.stdout
    assert (run / "report.md").exists() and (run / "run.json").exists()
    assert_same(snapshot(run), reference["snapshot"])


def test_a_missing_report_is_written_on_resume(tmp_path, reference):
    """A kill after run.json but before report.md left no report, ever."""
    run = stopped_run(tmp_path, reference["sft"], at_step=7)
    assert resume(run).returncode == 0
    (run / "report.md").unlink()
    res = resume(run)
    assert res.returncode == 0 and (run / "report.md").exists() and "it was missing" in res.stderr + res.stdout


DISK_FULL_AT_SAVE = """
import sys
import torch
import bpo.train.checkpoint
from bpo.cli import app

real = torch.save
def save(obj, path, *a, **k):  # the disk fills while the step-4 checkpoint is written
    if obj.get("next_step") == 4:
        real(obj, path, *a, **k)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 640 vs 512: file write failed")
    return real(obj, path, *a, **k)
bpo.train.checkpoint.torch.save = save
sys.argv = ["bpo", "train", "--no-eval", *sys.argv[1:]]
app()
"""


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_the_run_resumes(tmp_path, reference):
    """A full disk while a checkpoint was written ended in a traceback."""
    res = subprocess.run([sys.executable, "-c", DISK_FULL_AT_SAVE, *args(tmp_path, sft_dir=reference["sft"])],
                         env=ENV, capture_output=True, text=True)  # fmt: skip
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert last.startswith(f"error: cannot write {tmp_path / 'run' / 'checkpoints'} (") and "--resume" in last
    assert not (tmp_path / "run" / "checkpoints" / "step-000004").exists()  # the half-written one is not used
    assert resume(tmp_path / "run").returncode == 0
    assert_same(snapshot(tmp_path / "run"), reference["snapshot"])
