"""``bpo compare``: a grid of methods x seeds at equal annotation budget, and its report.

Each run is ``bpo train`` in its own process (so its wall time and peak memory are its own)
under ``OUT/<method>/seed<k>``. A run with an ``eval.json`` is finished and is not repeated; a
run with a checkpoint is resumed. The report (``OUT/report.md`` and PNG plots) is rebuilt from
the run folders every time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bpo.config import load_config

# method -> overrides; {T} is replaced by train.steps. Every method spends B*T annotations.
METHODS: dict[str, list[str]] = {
    "offline-dpo": ["train.phases=1", "train.reference=sft"],
    "online-dpo-sft": ["train.phases={T}", "train.reference=sft"],
    "bpo-f2": ["train.phases=2", "train.reference=behavior"],
    "bpo-fT": ["train.phases={T}", "train.reference=behavior"],
}


def run_grid(
    config: str, overrides: list[str], methods: list[str], seeds: list[int], out: Path, log=print
) -> list[Path]:
    base = load_config(config, overrides)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for seed in seeds:  # seed-major: an interrupted grid still has whole seeds for every method
        for method in methods:
            folder = out / method / f"seed{seed}"
            folders.append(folder)
            if (folder / "eval.json").exists():
                log(f"{method} seed {seed}: done, skipped")
                continue
            extra = [o.replace("{T}", str(base.train.steps)) for o in METHODS[method]]
            args = [
                config,
                *overrides,
                *extra,
                f"train.seed={seed}",
                f"output_dir={folder}",
                f"sft_dir={out / 'sft'}",
                "train.log_kl_sft=true",
            ]
            cmd = [sys.executable, "-m", "bpo.cli", "train"]
            cmd += ["--resume", str(folder), *args[1:]] if (folder / "checkpoints" / "latest").exists() else args
            log(f"{method} seed {seed}: running")
            with open(out / "compare.log", "a") as f:
                subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env={**os.environ})
    return folders


def _load(folder: Path) -> dict | None:
    if not (folder / "eval.json").exists():
        return None
    lines = (folder / "metrics.jsonl").read_text().splitlines(keepends=True)
    metrics = [json.loads(x) for x in lines if x.endswith("\n")]  # a line cut by a kill has no newline
    rows = [json.loads(x) for x in (folder / "eval_items.jsonl").read_text().splitlines()]
    items = {k: np.array([row[k] for row in rows], dtype=float) for k in rows[0] if k != "id"}
    by_step = {m["step"]: m for m in metrics}  # a resumed run may repeat steps: keep the last
    return {
        "eval": json.loads((folder / "eval.json").read_text()),
        "run": json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {},
        "metrics": [by_step[s] for s in sorted(by_step)],
        "items": items,
    }


def report(out: Path, command: str, seeds: list[int] | None = None) -> Path:
    """Write ``report.md`` and plots from the finished runs under ``out`` (only ``seeds``, when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bpo.evaluation import mean_ci, win_rate

    runs: dict[str, list[dict]] = {}
    for method in METHODS:
        for folder in sorted((out / method).glob("seed*")):
            if seeds is not None and int(folder.name.removeprefix("seed")) not in seeds:
                continue
            r = _load(folder)
            if r:
                runs.setdefault(method, []).append(r)
    if not runs:
        raise ValueError(f"{out}: no finished runs to report")
    lines = [
        "# Method comparison",
        "",
        f"Command: `{command}`",
        "",
        "Every method spends the same annotation budget (B*T pairs). Win rates are greedy responses on held-out "
        "prompts, judged by the task's judge; a tie counts one half. Intervals are 95% percentile bootstrap over "
        "prompts, pooled over seeds (per-seed values in brackets after the pooled one).",
        "",
        "| method | seeds | gold score (start -> trained) | improvement | win rate vs start | win rate vs reference "
        "| annotations | wall time / run | peak RSS |",
        "| --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    summary = {}
    for method, rs in runs.items():
        items = [r["items"] for r in rs]
        start = np.concatenate([i["start"] for i in items])
        trained = np.concatenate([i["trained"] for i in items])
        imp = mean_ci(trained - start)
        w = win_rate(trained, start)
        per_seed = ", ".join(f"{r['eval']['win_rate_vs_start']['win_rate']:.2f}" for r in rs)
        ref = "n/a"
        if all("reference" in i for i in items):
            ref_scores = np.concatenate([i["reference"] for i in items])
            wr = win_rate(trained, ref_scores)
            ref = f"{wr['win_rate']:.2f} [{wr['ci_low']:.2f}, {wr['ci_high']:.2f}]"
        summary[method] = w
        wall = np.mean([r["run"].get("wall_seconds", float("nan")) for r in rs])
        rss = max(r["run"].get("peak_rss_mib", 0) for r in rs)
        ann = np.mean([r["run"].get("annotations", float("nan")) for r in rs])
        lines.append(
            f"| {method} | {len(rs)} | {start.mean():.2f} -> {trained.mean():.2f} | {imp['mean']:+.2f} "
            f"[{imp['ci_low']:+.2f}, {imp['ci_high']:+.2f}] | {w['win_rate']:.2f} [{w['ci_low']:.2f}, "
            f"{w['ci_high']:.2f}] ({per_seed}) | {ref} | {ann:.0f} | {wall / 60:.1f} min | {rss} MiB |"
        )
    lines += ["", "![win rate](win_rate.png)", "", "![training curves](curves.png)", ""]

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(summary)
    vals = [summary[m]["win_rate"] for m in names]
    err = [
        [v - summary[m]["ci_low"] for m, v in zip(names, vals)],
        [summary[m]["ci_high"] - v for m, v in zip(names, vals)],
    ]
    ax.bar(names, vals, yerr=err, capsize=4, color="#4c72b0")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("win rate vs start (95% CI)")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out / "win_rate.png", dpi=120)
    plt.close(fig)

    # kl/behavior = E_beta[log beta - log theta] = KL(beta || theta) on the step's samples; kl/sft as logged is
    # E_beta[log sft - log theta], so kl/behavior - kl/sft = E_beta[log beta - log sft] = KL(beta || sft):
    # how far the model that collects the data has moved from SFT.
    for rs in runs.values():
        for r in rs:
            for m in r["metrics"]:
                if "kl/sft" in m and "kl/behavior" in m:
                    m["kl/behavior_to_sft"] = m["kl/behavior"] - m["kl/sft"]
    keys = [
        ("score/behavior_samples", "gold score of the sampled pairs"),
        ("loss", "loss (member mean)"),
        ("kl/behavior", "KL(behavior || policy)"),
        ("kl/behavior_to_sft", "KL(behavior || SFT)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, (key, title) in zip(axes, keys):
        for method, rs in runs.items():
            steps = [m["step"] for m in rs[0]["metrics"]]
            curves = [[m.get(key, np.nan) for m in r["metrics"]] for r in rs if len(r["metrics"]) == len(steps)]
            ax.plot(steps, np.nanmean(np.array(curves, dtype=float), axis=0), label=method)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
