"""The quickstart trained with each sampling backend at several seeds: does the engine change the result?

Each (backend, seed) is one ``bpo train quickstart sampling.backend=B train.seed=S`` run in
``runs/engine-quickstart/B-seedS`` (a finished run is read, not redone; the commit it ran on is
recorded beside it). The page gives, per seed, each backend's win rate vs start and improvement with
their 95% bootstrap intervals, whether the engine's win rate lies inside the HF run's interval, and the
engine - HF difference over seeds with a t interval (the seed is paired: same SFT members, same prompts).

    .venv/bin/python benchmarks/engine_quickstart.py --seeds 0,1,2 --out docs/benchmarks/engine-quickstart.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import publish

from bpo.stats import seed_mean_ci

ROOT = Path(__file__).resolve().parents[1]


def run(backend: str, seed: int, folder: Path) -> dict:
    """The run's eval.json, training it first when it has not finished."""
    if not (folder / "eval.json").exists():
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        folder.mkdir(parents=True, exist_ok=True)
        (folder.parent / f"{folder.name}.commit").write_text(commit.stdout)
        cmd = [str(ROOT / ".venv/bin/bpo"), "train", "quickstart", f"sampling.backend={backend}"]
        cmd += [f"train.seed={seed}", f"output_dir={folder}"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=sys.stderr)
    return json.loads((folder / "eval.json").read_text())


def _ci(d: dict, key: str, fmt: str) -> str:
    return f"{d[key]:{fmt}} [{d['ci_low']:{fmt}}, {d['ci_high']:{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--backends", default="hf,llamacpp", help="the first is the one the others are held against")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs/engine-quickstart")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    base, *others = a.backends.split(",")
    res = {(b, s): run(b, s, a.runs / f"{b}-seed{s}") for s in seeds for b in [base, *others]}
    marks = [a.runs / f"{b}-seed{s}.commit" for b, s in res]
    commits = sorted({m.read_text().strip() for m in marks if m.exists()})
    rows = ["| seed | backend | win rate vs start [95%] | improvement [95%] | inside the hf run's interval |"]
    rows.append("| ---: | --- | --- | --- | --- |")
    for s in seeds:
        ref = res[base, s]["win_rate_vs_start"]
        for b in [base, *others]:
            r = res[b, s]
            w = r["win_rate_vs_start"]
            inside = "" if b == base else ("yes" if ref["ci_low"] <= w["win_rate"] <= ref["ci_high"] else "**no**")
            imp = _ci(r["improvement"], "mean", "+.2f")
            rows.append(f"| {s} | {b} | {_ci(w, 'win_rate', '.3f')} | {imp} | {inside} |")
    body = ["## Per seed", "", *rows, "", "## Engine - hf, paired by seed", ""]
    body += ["| backend | win rate vs start: mean difference [t 95%] | improvement: mean difference [t 95%] |"]
    body += ["| --- | --- | --- |"]
    for b in others:
        dw = [res[b, s]["win_rate_vs_start"]["win_rate"] - res[base, s]["win_rate_vs_start"]["win_rate"] for s in seeds]
        di = [res[b, s]["improvement"]["mean"] - res[base, s]["improvement"]["mean"] for s in seeds]
        cw, ci = seed_mean_ci(dw), seed_mean_ci(di)
        body.append(
            f"| {b} | {cw['mean']:+.3f} [{cw['ci_low']:+.3f}, {cw['ci_high']:+.3f}] "
            f"| {ci['mean']:+.2f} [{ci['ci_low']:+.2f}, {ci['ci_high']:+.2f}] |"
        )
    where = a.runs.relative_to(ROOT) if a.runs.is_relative_to(ROOT) else a.runs
    intro = (
        f"`.venv/bin/python benchmarks/engine_quickstart.py --seeds {a.seeds} --backends {a.backends}`: "
        f"`bpo train quickstart sampling.backend=B train.seed=S` (the quickstart's exact judge, 64 held-out prompts), "
        f"code of commit {', '.join(commits) or 'unrecorded'}. Run folders: `{where}`."
    )
    publish("The quickstart with each sampling backend", intro, body, a.out)


if __name__ == "__main__":
    main()
