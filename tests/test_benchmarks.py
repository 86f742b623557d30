"""The benchmark scripts stay runnable: each runs end to end on a tiny model on CPU (numbers not checked)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# each benchmark script runs end to end (10-110 s each); scripts/test.sh --fast leaves them out
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-random-llama", "--task", "quickstart"]


def bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_gpu_check_runs_in_its_cpu_smoke_mode(tmp_path):
    """scripts/gpu-check.sh --smoke: every method end to end, then gpu_step.py on random weights (tiny shapes)."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--smoke", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = (tmp_path / "e2e" / "report.md").read_text()
    for method in ("offline-dpo", "online-dpo-sft", "bpo-f2", "bpo-fT"):
        assert (tmp_path / "e2e" / method / "seed0" / "final" / "behavior" / "adapter_config.json").exists()
        assert method in report
    step = (tmp_path / "gpu-step.md").read_text()
    flops = next(line for line in step.splitlines() if "training FLOPs" in line)
    assert float(flops.split("|")[2]) > 0
    assert "| update s/step |" in step and "| sample s/step |" in step and "random:tiny" in step
    logps = (tmp_path / "sampler-logps.md").read_text()
    assert "| bfloat16 | bpo's sampler (adapter unfolded) vs teacher-forced |" in logps
    assert "| float32 | bpo's sampler (adapter folded: exact in fp32) vs teacher-forced |" in logps


def test_generation_variants_sample_the_same_tokens():
    out = bench("generation.py", *TINY, "--prompts", "2", "--tokens", "6", "--repeats", "1")
    rows = {line for line in out.splitlines() if line.startswith("| ") and line.endswith("|") and "x |" in line}
    assert len(rows) == 4 and all(line.rstrip(" |").endswith("yes") for line in rows), out


def test_memory_breakdown_has_every_stage():
    out = bench("memory.py", *TINY, "--batch", "2", "--tokens", "4", "--k", "1")
    rows = {line for line in out.splitlines() if line.startswith("| micro") or line.startswith("| whole")}
    assert len(rows) == 4 and all(len(line.split("|")) == 9 for line in rows), out


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL not installed (pip install -e .[bench])")
def test_vs_trl_runs_both_sides():
    out = bench("vs_trl.py", *TINY, "--steps", "2", "--batch", "2", "--tokens", "4", "--threads", "1",
                "--repeats", "1", "--only", "TRL OnlineDPOTrainer,F = 2")  # fmt: skip
    assert "| TRL OnlineDPOTrainer" in out and "| bpo BPO F = 2" in out
