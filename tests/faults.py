"""What the fault tests share: the standard tiny run, running it in a subprocess, stopping it, and what must
be identical between an interrupted-and-resumed run and an uninterrupted one (``reference``, in conftest)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import adapters, tiny_config

from bpo.config import load_config

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


HOLD = """
import sys, time
from pathlib import Path
import bpo.train.loop as loop
from bpo.cli import app

fit, at, held, go = loop.fit, int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def holding(run, state, progress, started, on_step=None):
    def hold(run, step, metrics):
        if step + 1 == at:  # after the step's metrics, before its checkpoint: wait for the test
            held.write_text("held")
            deadline = time.time() + 300
            while not go.exists() and time.time() < deadline:
                time.sleep(0.02)
    return fit(run, state, progress, started, hold)

loop.fit = holding
sys.argv = ["bpo", *sys.argv[4:]]
app()
"""


def held_run(tmp_path: Path, at_step: int, bpo_args: list[str]) -> tuple[subprocess.Popen, Path]:
    """``bpo ARGS`` in a child that holds after step ``at_step`` (the run folder locked, mid-run) until the test
    creates the returned file; returns once it holds. Waiting on that event, not on a guessed sleep, is what makes
    a test that races the run (a signal, a second process) deterministic on a loaded machine."""
    held, go = tmp_path / "held", tmp_path / "go"
    cmd = [sys.executable, "-c", HOLD, str(at_step), str(held), str(go), *bpo_args]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not held.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert held.exists(), f"the run did not reach step {at_step}: {proc.stderr.read()[-2000:] if proc.poll() else ''}"
    return proc, go


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


def reference_run(tmp_path_factory) -> dict:
    """One uninterrupted run, in a subprocess like the runs it is compared with."""
    folder = tmp_path_factory.mktemp("reference")
    cmd = [sys.executable, "-m", "bpo.cli", "train", "--no-eval", *args(folder, sft_dir=folder / "sft")]
    subprocess.run(cmd, check=True, env=ENV, capture_output=True)
    return {"snapshot": snapshot(folder / "run"), "sft": folder / "sft"}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
