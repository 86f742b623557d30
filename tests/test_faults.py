"""Faults: every one is either recovered exactly or refused with one line, and nothing paid for is lost.

Each test damages a real run of tiny-random-llama the way a crash, a full disk, a careless user
or a second process would, then checks the property: the resumed run equals an uninterrupted
one bit for bit, or the refusal names what is wrong before any work.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import adapters, tiny_config

from bpo.config import load_config
from bpo.io import FolderInUseError, FolderLock
from bpo.train.ledger import AnnotationLog, LedgerError
from bpo.train.loop import train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
OVER = {"train.steps": 8, "train.phases": 2, "train.save_every": 2, "sampling.max_new_tokens": 16}


def args(folder: Path, **over) -> list[str]:
    return tiny_config(folder, **{**OVER, **over})


def cfg_of(folder: Path, **over):
    return load_config("quickstart", args(folder, **over))  # as `bpo train` with no config name


def snapshot(run: Path) -> dict:
    """What must be identical between an interrupted-and-resumed run and an uninterrupted one."""
    ledger = [json.loads(x) for x in (run / "annotations.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:  # wall-clock seconds (time, time/<part>) differ from run to run
        for key in [k for k in m if k == "time" or k.startswith("time/")]:
            m.pop(key)
    return {"adapters": adapters(run / "final"), "ledger": ledger, "metrics": metrics}


def assert_same(got: dict, want: dict) -> None:
    assert got["adapters"].keys() == want["adapters"].keys() and want["adapters"]
    for key, value in want["adapters"].items():
        assert torch.equal(got["adapters"][key], value), key
    assert got["ledger"] == want["ledger"]
    assert got["metrics"] == want["metrics"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One uninterrupted run, in a subprocess like the runs it is compared with."""
    folder = tmp_path_factory.mktemp("reference")
    cmd = [sys.executable, "-m", "bpo.cli", "train", "--no-eval", *args(folder, sft_dir=folder / "sft")]
    subprocess.run(cmd, check=True, env=ENV, capture_output=True)
    return {"snapshot": snapshot(folder / "run"), "sft": folder / "sft"}


STOP = """
import sys
from bpo.config import load_config
from bpo.errors import Interrupted
from bpo.train.loop import train

def stop(run, step, metrics):
    if step + 1 == int(sys.argv[1]):
        raise KeyboardInterrupt

try:
    train(load_config("quickstart", sys.argv[2:]), evaluate=False, on_step=stop)
except Interrupted as err:
    print(err)
"""


def stopped_run(tmp_path: Path, sft: Path, at_step: int) -> Path:
    """A run stopped (as if killed) after ``at_step`` steps, with its checkpoints on disk.

    In a subprocess like the reference (same threads, so the same bits).
    """
    res = subprocess.run(
        [sys.executable, "-c", STOP, str(at_step), *args(tmp_path, sft_dir=sft)],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert f"interrupted at step {at_step + 1} of 8; continue with `bpo train --resume" in res.stdout, res.stderr[
        -3000:
    ]
    return tmp_path / "run"


def resume(run: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bpo.cli", "train", "--resume", str(run), "--no-eval"]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True)


# ----------------------------------------------------------------------------- random SIGKILLs


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


# ----------------------------------------------------------------------------- checkpoints


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


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


# ----------------------------------------------------------------------------- the ledger


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


# ----------------------------------------------------------------------------- one writer, leftovers, finished runs


def test_a_second_process_on_the_run_folder_is_refused_naming_the_holder(tmp_path, reference):
    cfg = cfg_of(tmp_path, sft_dir=reference["sft"])
    with FolderLock(cfg.output_dir):
        with pytest.raises(FolderInUseError, match=rf"run folder {cfg.output_dir} is in use by pid {os.getpid()}"):
            train(cfg, evaluate=False)
    assert not (Path(cfg.output_dir) / "annotations.jsonl").exists()


def test_two_processes_started_together_write_once(tmp_path, reference):
    cmd = [sys.executable, "-m", "bpo.cli", "train", "--no-eval", *args(tmp_path, sft_dir=reference["sft"])]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(), p.stderr.read().decode()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is in use by pid" in refused.strip().splitlines()[-1]
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


def test_ctrl_c_says_how_to_continue(tmp_path, reference):
    # T = 200: the run must still be going when the signal lands (at T = 8 a loaded machine lost the race)
    over = args(tmp_path, sft_dir=reference["sft"], **{"train.steps": 200})
    cmd = [sys.executable, "-m", "bpo.cli", "train", "--no-eval", *over]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted at step ") and last.endswith(
        f"continue with `bpo train --resume {tmp_path / 'run'}`"
    )
    assert resume(tmp_path / "run").returncode == 0
    # every step once (bit-identical resumes are checked above, against the T = 8 reference)
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 201))


def test_sft_leftovers_are_removed_and_the_cache_reused(tmp_path):
    from typer.testing import CliRunner

    from bpo.cli import app

    sft = tmp_path / "sft"
    (sft / ".member0-x1y2").mkdir(parents=True)  # a member save cut short by a kill
    over = [f"sft_dir={sft}", "model.name=tiny-random-llama", "device=cpu", "sft.seeds=[0]", "data.sft_examples=4"]
    assert CliRunner().invoke(app, ["sft", "quickstart", *over, "sft.epochs=1", "lora.r=4"]).exit_code == 0
    assert not (sft / ".member0-x1y2").exists() and (sft / "member0" / "adapter_model.safetensors").exists()


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


# ----------------------------------------------------------------------------- verified weights


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
