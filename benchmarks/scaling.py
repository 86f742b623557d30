"""One process against N processes (accelerate launch, data parallel) on the same run.

Both runs have the same global batch and settings; with N processes each takes B/N prompts a step,
samples and trains on them, and the members' gradients are summed across processes before every
optimizer step. Keyed sampling makes both runs see the same pairs, so their adapters must agree
up to float reduction order; the script prints the largest difference beside the timings. The
threads are split evenly (one process gets all of them, each of N gets 1/N), so on one machine this
measures the parallel overhead and what data parallelism buys over intra-op threads.

Run: .venv/bin/python benchmarks/scaling.py [--processes 2 --steps 8] [--out docs/benchmarks/scaling.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import publish  # benchmarks/common.py (scripts run from this folder)
from safetensors.torch import load_file


def adapters(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.rglob("adapter_model.safetensors")):
        out.update({f"{f.parent.name}/{k}": v for k, v in load_file(str(f)).items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    rows, finals = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        common = [a.preset, "--no-eval", f"train.steps={a.steps}", f"sft_dir={tmp}/sft", f"device={a.device}"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        # the shared SFT first, so neither timed run pays for it
        sft = [sys.executable, "-m", "bpo.cli", "sft", a.preset, f"sft_dir={tmp}/sft", f"device={a.device}"]
        subprocess.run(sft, check=True, env={**env, "OMP_NUM_THREADS": str(a.threads)}, capture_output=True)
        for n in (1, a.processes):
            out = Path(tmp) / f"p{n}"
            config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "cpu-2-processes.yaml"
            many = [accelerate, "launch", "--config_file", str(config), "--num_processes", str(n), "-m"]
            launch = [sys.executable, "-m"] if n == 1 else many
            cmd = [*launch, "bpo.cli", "train", *common, f"output_dir={out}"]
            started = time.time()
            done = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": str(max(1, a.threads // n))}, capture_output=True)
            wall = time.time() - started
            if done.returncode:
                raise SystemExit(f"error: {n} process(es) failed:\n{done.stderr.decode()[-3000:]}")
            metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            step = sum(m["time/step"] for m in metrics) / len(metrics)
            rss = json.loads((out / "run.json").read_text())["peak_rss_mib"] / 1024
            finals[n] = adapters(out / "final")
            rows.append((n, step, wall, rss))
            print(f"{n} process(es): {step:.2f} s/step, {wall:.0f} s wall, peak RSS {rss:.2f} GB (rank 0)", flush=True)
    diff = max((finals[1][k] - finals[a.processes][k]).abs().max().item() for k in finals[1])
    table = [
        "| processes | threads each | s/step | speed-up | wall (load + steps) | peak RSS, rank 0 |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {max(1, a.threads // n)} | {s:.2f} | {rows[0][1] / s:.2f}x | {w:.0f} s | {r:.2f} GB |"
            for n, s, w, r in rows
        ),
    ]
    publish(
        "Data parallel: one process against several",
        f"`.venv/bin/python benchmarks/scaling.py --preset {a.preset} --processes {a.processes} --steps "
        f"{a.steps} --threads {a.threads} --device {a.device}` on {platform.machine()}, torch "
        f"{torch.__version__}: the {a.preset} preset for {a.steps} steps, the same global batch, SFT shared.",
        [
            *table,
            "",
            f"Largest difference between the two runs' final adapters: {diff:.2e} (same pairs by keyed sampling; "
            "float reduction order differs).",
        ],
        a.out,
    )


if __name__ == "__main__":
    main()
