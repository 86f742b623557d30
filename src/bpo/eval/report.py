"""A report for any run, or several overlaid: ``report.md`` and ``curves.png`` from the run folders.

Every finished run writes its own (``RUN/report.md``, ``RUN/curves.png``); ``bpo report RUN ...``
overlays runs. Everything comes from what a run folder already holds (``config.yaml``,
``metrics.jsonl``, ``eval.json``, ``run.json``), so a report can be rebuilt at any time.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import yaml

from bpo.errors import BpoError
from bpo.io import read_jsonl, write_text_atomic
from bpo.progress import trained_nothing
from bpo.registry import ANNOTATOR_KINDS, LOSSES, REFERENCES
from bpo.stats import accuracy_text, at_chance

CURVES = [  # metric, title
    ("loss", "loss (member mean)"),
    ("rewards/margins", "reward margin (beta x log-ratio)"),
    ("rewards/accuracies", "reward accuracy"),
    ("kl/behavior", "KL(behavior || policy)"),
    ("kl/behavior_to_sft", "KL(behavior || SFT)"),
    ("score/behavior_samples", "annotator score of the samples"),
    ("lr", "learning rate"),
    ("time/step", "seconds per step"),
]


class ReportError(BpoError, ValueError):
    """A folder is not a bpo run (no config.yaml or metrics.jsonl)."""


def load_run(folder: str | Path) -> dict:
    """A run folder's config, per-step metrics, evaluation and run summary (the last two may be absent)."""
    folder = Path(folder)
    metrics = folder / "metrics.jsonl"
    if not (folder / "config.yaml").exists() or not (metrics.exists() or metrics.with_suffix(".jsonl.gz").exists()):
        raise ReportError(f"{folder} is not a bpo run folder (it needs config.yaml and metrics.jsonl)")

    def read(name: str) -> dict:
        path = folder / name
        if not path.exists():
            return {}
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ReportError(
                f"{path}: not valid JSON ({type(err).__name__}); bpo writes it whole, so it was changed "
                "or damaged: restore it, or delete it and run bpo train --resume to write it again"
            ) from None
        if not isinstance(value, dict):
            raise ReportError(f"{path}: not a JSON object; restore it or delete it")
        return value

    rows = read_jsonl(folder / "metrics.jsonl")
    bad = next((i for i, m in enumerate(rows, 1) if not isinstance(m, dict) or not isinstance(m.get("step"), int)), 0)
    if bad:
        raise ReportError(f"{folder / 'metrics.jsonl'}: row {bad} is not a step's metrics; restore the file")
    by_step = {m["step"]: m for m in rows}  # a resumed run may repeat steps
    return {
        "folder": folder,
        "config": yaml.safe_load((folder / "config.yaml").read_text()),
        "metrics": [by_step[s] for s in sorted(by_step)],  # the last of each step
        "eval": read("eval.json"),
        "run": read("run.json"),
    }


def plot(
    series: dict[str, list[list[dict]]], path: Path, keys=CURVES, phase_marks: bool = True, each_run: bool = False
) -> None:
    """One panel per metric; each label's curve is the mean of its runs (seeds), dotted lines at its
    phase starts when it has one run. ``each_run``: every run also drawn thin in the label's colour, so
    that one seed that drifts shows instead of being averaged away."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, t) for k, t in keys if any(k in m for runs in series.values() for r in runs for m in r)]
    cols = min(4, len(keys)) or 1
    rows = -(-len(keys) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, keys):
        for label, runs in series.items():
            steps = [m["step"] for m in runs[0]]
            curves = [[m.get(key, np.nan) for m in r] for r in runs if len(r) == len(steps)]
            with warnings.catch_warnings():  # a step no run logged this metric at is a gap, not a warning
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.array(curves, dtype=float), axis=0)
            line = ax.plot(steps, mean, label=label, zorder=3)[0]  # above its seeds' thin lines
            for curve in curves if each_run and len(curves) > 1 else []:
                ax.plot(steps, curve, color=line.get_color(), lw=0.7, alpha=0.25)
            if phase_marks and len(runs) == 1:
                starts = [m["step"] for j, m in enumerate(runs[0]) if j == 0 or m["phase"] != runs[0][j - 1]["phase"]]
                for s in starts[1:]:
                    ax.axvline(s - 0.5, color=line.get_color(), ls=":", lw=0.8, alpha=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def method_line(cfg: dict) -> str:
    t, k = cfg["train"], len(cfg["sft"]["seeds"])
    if t["loss"] in LOSSES and not LOSSES.get(t["loss"]).reference:
        name = f"no reference ({t['loss']})"
    else:  # a rule from a plugin that is not installed here is named as the run named it
        name = REFERENCES.get(t["reference"]).label(t) if t["reference"] in REFERENCES else t["reference"]
    if t["phases"] == 1:
        name = "offline (F = 1), " + name
    return f"{name}: {t['loss'].upper()} F={t['phases']} T={t['steps']} B={t['batch_size']} K={k}"


def eval_lines(ev: dict) -> list[str]:
    if not ev:
        return ["not evaluated (--no-eval, or the run has not finished)"]
    s, tr, imp, w = ev["start"], ev["trained"], ev["improvement"], ev["win_rate_vs_start"]
    out = [
        f"judge `{ev.get('judge', '?')}`, {ev['n']} held-out prompts, greedy: score {s['mean']:.2f} -> "
        f"{tr['mean']:.2f}, improvement {imp['mean']:+.2f} [{imp['ci_low']:+.2f}, {imp['ci_high']:+.2f}]; "
        f"win rate vs start {w['win_rate']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}] "
        f"({w['wins']}/{w['ties']}/{w['losses']} wins/ties/losses)"
    ]
    if "win_rate_vs_reference" in ev:
        v = ev["win_rate_vs_reference"]
        out.append(f"win rate vs the reference {v['win_rate']:.2f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}]")
    acc = ev.get("judge_accuracy")
    if acc:  # the figures above are only as good as the judge
        coin = " (includes 0.5: not shown to beat a coin)" if at_chance(acc) else ""
        out.append(accuracy_text(acc, "the judge's held-out accuracy") + coin)
    return out


def tie_warning(result: dict, what: str) -> list[str]:
    """A win rate most of whose prompts are ties says little about either system."""
    if result and result.get("n") and result.get("ties", 0) * 2 > result["n"]:
        return [
            f"warning: the win rate {what} rests mostly on ties ({result['ties']} of {result['n']} prompts): it says "
            "little about which system is better"
        ]
    return []


def run_warnings(metrics: list[dict], ev: dict, steps: int) -> list[str]:
    """What makes a run's figures mean little: most steps trained on no pair, or win rates made of ties."""
    out = []
    idle = sum(map(trained_nothing, metrics))
    if idle * 2 > steps:
        out.append(
            f"warning: {idle} of {steps} steps trained on no pair (every pair a tie, identical, invalid or "
            "unlabelled): the result does not measure training; check the annotator's verdicts and train.lr"
        )
    if ev:
        out += tie_warning(ev.get("win_rate_vs_start", {}), "vs start")
        out += tie_warning(ev.get("win_rate_vs_reference", {}), "vs the reference")
    return out


def judge_model(cfg: dict) -> str:
    """The model the run's annotator kind judges with, as its config names it ('' for a kind without one, or no
    longer registered); a run saved before the judge section named its LLM judge's model in annotator.model."""
    kind = cfg["annotator"]["kind"]
    key = ANNOTATOR_KINDS.get(kind).model_key if kind in ANNOTATOR_KINDS else ""
    if not key:
        return ""
    part, name = key.split(".")
    return cfg.get(part, {}).get(name) or cfg["annotator"]["model"]


def _run_lines(r: dict) -> list[str]:
    cfg, info, t, ann = r["config"], r["run"], r["config"]["train"], r["config"]["annotator"]
    judge = f" (`{judge_model(cfg)}`)" if judge_model(cfg) else ""
    used = info.get("annotations", r["metrics"][-1].get("annotations/used", 0) if r["metrics"] else 0)
    cost = f"; wall {info['wall_seconds'] / 60:.1f} min, peak RSS {info['peak_rss_mib'] / 1024:.1f} GB" if info else ""
    return [
        f"- method: {method_line(cfg)}, lr {t['lr']}, beta {t['beta']}, seed {t['seed']}",
        f"- model: `{cfg['model']['name']}` ({cfg['model']['dtype']}), LoRA r {cfg['lora']['r']}",
        f"- annotator: `{ann['kind']}`{judge}",
        f"- steps logged: {len(r['metrics'])} of {t['steps']}; annotations {used:.0f}{cost}",
        *[f"- {x}" for x in eval_lines(r["eval"])],
        *[f"- **{x}**" for x in run_warnings(r["metrics"], r["eval"], t["steps"])],
    ]


def model_card(run: Path, kind: str) -> str:
    """A model card for ``kind``: ``merged`` (a transformers folder), ``adapter`` (the behavior model as a
    PEFT adapter) or ``final`` (a run's final/ folder): what made it, how it did, how to load it."""
    from bpo.model.policy import HUB_NAMES, base_model_path

    r = load_run(run)
    cfg = r["config"]
    name = cfg["model"]["name"]
    base = HUB_NAMES.get(name, name)
    ann, judge = cfg["annotator"], f" ({judge_model(cfg)})" if judge_model(cfg) else ""
    what = {
        "merged": "The behavior model merged into the base weights",
        "adapter": "The behavior model, a LoRA adapter",
        "final": "A run's final models as LoRA adapters: `behavior/` (the trained model), `sft/` (the start), "
        "`member*/` (the ensemble)",
    }[kind]
    folder = "." if kind != "final" else "behavior"
    if kind == "merged":
        load = f'AutoModelForCausalLM.from_pretrained("{folder}")'
    else:
        load = f'AutoPeftModelForCausalLM.from_pretrained("{folder}")  # base: {base_model_path(name)}'
    local = f" (offline copy: `{base_model_path(name)}`)" if base_model_path(name) != name else ""
    return "\n".join(
        [
            "---",
            f"base_model: {base}",
            f"library_name: {'transformers' if kind == 'merged' else 'peft'}",
            "tags: [bpo, dpo, preference-alignment, lora]",
            "---",
            "",
            f"# {run.name}: {base} aligned with bpo",
            "",
            f"{what} (the behavior model is the 1/K merge of the ensemble's members), trained by bpo with BPO "
            "(arXiv 2406.12168).",
            "",
            f"- base model: {base}{local}",
            f"- method: {method_line(cfg)}, lr {cfg['train']['lr']}, beta {cfg['train']['beta']}",
            f"- annotator: {ann['kind']}{judge}",
            *[f"- {line}" for line in eval_lines(r["eval"])],
            "",
            "Load it:",
            "",
            "```python",
            "from peft import AutoPeftModelForCausalLM"
            if kind != "merged"
            else "from transformers import AutoModelForCausalLM",
            load,
            "```",
            "",
        ]
    )


def write_report(folders: list[str | Path], out: str | Path, command: str = "") -> Path:
    """``out/report.md`` and ``out/curves.png`` for one run or several overlaid; returns the report's path."""
    runs = [load_run(f) for f in folders]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [r["folder"].name if len(runs) > 1 else "run" for r in runs]
    if len(set(labels)) < len(labels):  # same leaf names (seed0 of two methods): use the parent too
        labels = [f"{r['folder'].parent.name}/{r['folder'].name}" for r in runs]
    plot({label: [r["metrics"]] for label, r in zip(labels, runs)}, out / "curves.png")
    lines = ["# Run report" if len(runs) == 1 else "# Runs overlaid", ""]
    if command:
        lines += [f"Made with `{command}`.", ""]
    for label, r in zip(labels, runs):
        lines += [f"## {label}" if len(runs) > 1 else f"`{r['folder']}`", "", *_run_lines(r), ""]
    lines += ["![curves](curves.png)", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def plot_win_rates(summary: dict[str, dict], path: Path) -> None:
    """A grid's win rates vs start: one bar a method (pooled prompts, 95% interval), one dot a seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(summary)
    vals = [summary[m]["win_rate"] for m in names]
    err = [
        [v - summary[m]["ci_low"] for m, v in zip(names, vals)],
        [summary[m]["ci_high"] - v for m, v in zip(names, vals)],
    ]
    ax.bar(names, vals, yerr=err, capsize=4, color="#4c72b0", label="pooled (95% CI over prompts)")
    for i, m in enumerate(names):
        ax.plot(
            [i] * len(summary[m]["per_seed"]),
            summary[m]["per_seed"],
            "o",
            color="black",
            ms=4,
            label="one seed" if i == 0 else None,
        )
    ax.set_ylabel("win rate vs start (a tie is not a win)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
