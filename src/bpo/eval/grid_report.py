"""The report of a ``bpo compare`` grid: per-method table, head-to-head against offline DPO, the start
model's standing, the grid's claims with what their intervals support, and plots; built from the run
folders (or their published raw files) alone, so it can be rebuilt at any time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from bpo.config import load_config
from bpo.eval.compare import METHODS, parse_claims
from bpo.eval.report import load_run, plot, plot_win_rates
from bpo.io import read_jsonl, write_text_atomic
from bpo.registry import ANNOTATOR_KINDS


def _seed(folder: Path) -> int:
    return int(folder.name.removeprefix("seed"))


def _load(folder: Path) -> dict | None:
    if not (folder / "eval.json").exists():
        return None
    run = load_run(folder)  # its eval, run summary and metrics (the last of each step)
    rows = read_jsonl(folder / "eval_items.jsonl")  # or its .gz, published beside a report
    numeric = [k for k, v in rows[0].items() if isinstance(v, (int, float))]  # scores; not ids or responses
    items = {k: np.array([row[k] for row in rows], dtype=float) for k in numeric}
    return {
        "seed": _seed(folder),
        "config": load_config(folder / "config.yaml"),
        "rows": rows,
        "eval": run["eval"],
        "run": run["run"],
        "metrics": run["metrics"],
        "items": items,
    }


def _collect(out: Path, seeds: list[int] | None, methods: list[str] | None = None) -> dict[str, list[dict]]:
    """Finished runs under ``out``, by method, in seed order (only ``seeds`` and ``methods``, when given)."""
    runs: dict[str, list[dict]] = {}
    for method in methods or METHODS:
        folders = [f for f in (out / method).glob("seed*") if seeds is None or _seed(f) in seeds]
        found = sorted((r for f in folders if (r := _load(f))), key=lambda r: r["seed"])
        if found:
            runs[method] = found
    return runs


def _ci(d: dict, fmt: str = "+.2f") -> str:
    return f"[{d['ci_low']:{fmt}}, {d['ci_high']:{fmt}}]"


def _by_seed(rs: list[dict], key: str) -> np.ndarray:
    """[seeds, prompts] array of one eval-item field; every seed must have judged the same prompts."""
    ids = {tuple(row["id"] for row in r["rows"]) for r in rs}
    if len(ids) > 1:
        raise ValueError("the seeds of one method were evaluated on different prompts; pooled intervals need the same")
    return np.stack([r["items"][key] for r in rs])


def _method_table(runs: dict[str, list[dict]]) -> tuple[list[str], dict[str, dict]]:
    """One row per method: pooled scores and win rates, and the spread between seeds."""
    from bpo.stats import mean_ci, pooled_win_rate, prompt_bootstrap_ci, seed_mean_ci, win_rate

    lines = [
        "| method | seeds | gold score (start -> trained) | improvement over seeds [t 95%] (per seed) "
        "| improvement, pooled prompts | win rate vs start (per seed) | ties vs start | win rate vs reference "
        "| win rate vs reference, the annotator judging | annotations | wall time / run | peak RSS |",
        "| --- | ---: | --- | --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    summary = {}
    for method, rs in runs.items():
        start, trained = _by_seed(rs, "start"), _by_seed(rs, "trained")
        per_seed_imp = [float(x) for x in (trained - start).mean(axis=1)]
        over_seeds = seed_mean_ci(per_seed_imp)
        w = pooled_win_rate(trained, start)
        w["per_seed"] = [win_rate(a, b)["win_rate"] for a, b in zip(trained, start)]
        ref = "n/a"
        if all("reference" in r["items"] for r in rs):
            wr = pooled_win_rate(trained, _by_seed(rs, "reference"))
            ref = f"{wr['win_rate']:.2f} {_ci(wr, '.2f')}"
        own = "same judge"  # eval.gold unset: the annotator is the judge
        if all("annotator_reference" in r["items"] for r in rs):
            wo = pooled_win_rate(_by_seed(rs, "annotator_trained"), _by_seed(rs, "annotator_reference"))
            own = f"{wo['win_rate']:.2f} {_ci(wo, '.2f')}"
        summary[method] = w
        seeds_txt = ", ".join(f"{v:+.2f}" for v in per_seed_imp)
        spread = _ci(over_seeds) if len(rs) > 1 else "[n/a]"
        wall = np.median([r["run"].get("wall_seconds", float("nan")) for r in rs])
        rss = max(r["run"].get("peak_rss_mib", 0) for r in rs)
        ann = np.mean([r["run"].get("annotations", float("nan")) for r in rs])
        lo, hi = prompt_bootstrap_ci(trained - start)
        imp = {**mean_ci((trained - start).ravel()), "ci_low": lo, "ci_high": hi}
        lines.append(
            f"| {method} | {len(rs)} | {start.mean():.2f} -> {trained.mean():.2f} "
            f"| {over_seeds['mean']:+.2f} {spread} ({seeds_txt}) | {imp['mean']:+.2f} {_ci(imp)} "
            f"| {w['win_rate']:.2f} {_ci(w, '.2f')} ({', '.join(f'{v:.2f}' for v in w['per_seed'])}) "
            f"| {w['tie_rate']:.2f} | {ref} | {own} | {ann:.0f} | {wall / 60:.1f} min | {rss} MiB |"
        )
    return lines, summary


def _paired(runs: dict[str, list[dict]], method: str, baseline: str, gain: bool = False) -> tuple[list[float], dict]:
    """``method`` minus ``baseline`` on the seeds both finished (same seeds, same eval prompts): the per-seed
    gaps of the mean gold score (``gain``: of the gain over each run's start), and the win rate of ``method``
    over ``baseline`` pooled over those prompts."""
    from bpo.stats import pooled_win_rate

    base = {r["seed"]: r["items"] for r in runs[baseline]}
    pairs = [(r["items"], base[r["seed"]]) for r in runs[method] if r["seed"] in base]
    if not pairs:
        return [], {}
    diffs = [float(a["trained"].mean() - b["trained"].mean()) for a, b in pairs]
    if gain:
        diffs = [d - float(a["start"].mean() - b["start"].mean()) for d, (a, b) in zip(diffs, pairs)]
    return diffs, pooled_win_rate(
        np.stack([a["trained"] for a, _ in pairs]), np.stack([b["trained"] for _, b in pairs])
    )


def _head_to_head(runs: dict[str, list[dict]], baseline: str) -> list[str]:
    """Each method against ``baseline`` on the seeds both finished."""
    from bpo.stats import seed_mean_ci

    lines = [
        f"| method | seeds in common | gold score minus {baseline} over seeds [t 95%] (per seed) "
        f"| seeds ahead | detectable difference | win rate vs {baseline}, pooled prompts | ties |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for method in runs:
        diffs, w = _paired(runs, method, baseline) if method != baseline else ([], {})
        if not diffs:
            continue
        d = seed_mean_ci(diffs)
        spread = _ci(d) if len(diffs) > 1 else "[n/a]"
        lines.append(
            f"| {method} | {len(diffs)} | {d['mean']:+.2f} {spread} ({', '.join(f'{x:+.2f}' for x in diffs)}) "
            f"| {sum(x > 0 for x in diffs)} of {len(diffs)} | {_detectable(diffs)} "
            f"| {w['win_rate']:.2f} {_ci(w, '.2f')} | {w['tie_rate']:.2f} |"
        )
    return lines


def _claims(runs: dict[str, list[dict]], claims: list[tuple[str, str]], margin: float) -> list[str]:
    """Each claim "A beats B" with its paired per-seed gaps and the sentence their interval supports."""
    from bpo.stats import start_groups, verdict

    lines = [
        "| claim | seeds | gold score gap per seed | detectable difference | what the interval supports |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    shared, gains = [set(methods) for methods, _ in start_groups(runs)], False
    for a, b in claims:
        both = a in runs and b in runs
        gain = both and not any({a, b} <= g for g in shared)  # another start: its gain
        diffs = _paired(runs, a, b, gain)[0] if both else []
        per_seed = ", ".join(f"{x:+.2f}" for x in diffs) or "no seed in common"
        said = verdict(diffs, margin) if diffs else "not run"
        gains |= gain
        what = f"{a} beats {b}" + (" (gain over its own start)" if gain else "")
        lines.append(f"| {what} | {len(diffs)} | {per_seed} | {_detectable(diffs)} | {said} |")
    if gains:
        lines += [
            "",
            "Where two methods start from different models (another SFT ensemble), the gaps are of each run's "
            "gain over its own start: the final scores would credit the better start.",
        ]
    return lines + [
        "",
        "*Holds*: the 95% t interval of the paired per-seed gaps lies above 0; *does not hold*: it lies below 0, or "
        f"inside +/-{margin:.2f} gold points (no gap of that size); otherwise *not settled*, with the smallest gap "
        "these seeds would detect.",
    ]


def _detectable(diffs: list[float]) -> str:
    from bpo.stats import detectable_difference

    d = detectable_difference(diffs)
    return "n/a" if np.isnan(d) else f"{d:.2f}"


def _drift(runs: dict[str, list[dict]]) -> list[str]:
    """Seed by seed, how far each method moved from its start and whether it got worse: the spread a mean hides
    (the paper's claim that one LoRA drifts where an ensemble does not is about this)."""

    def last(rs: list[dict], key: str) -> str:
        cells = []
        for r in rs:
            # a step whose pairs were all identical or tied trains on nothing and measures no KL: take the latest
            # step that did, and say which
            rows = [m for m in r["metrics"] if m.get(key) is not None]
            if not rows:
                cells.append("n/a")
                continue
            # + 0.0 turns a -0.0 from rounding float noise (F = 1: the behavior model is the SFT) into 0.00
            cell = f"{round(rows[-1][key], 2) + 0.0:.2f}"
            cells.append(cell if rows[-1] is r["metrics"][-1] else f"{cell} (step {rows[-1].get('step', '?')})")
        return ", ".join(cells)

    lines = [
        "| method | seeds | gold gain per seed | seeds worse than their start | last step's KL(behavior \\|\\| SFT) "
        "| last step's KL(behavior \\|\\| policy) |",
        "| --- | ---: | --- | ---: | --- | --- |",
    ]
    for method, rs in runs.items():
        gains = [float((r["items"]["trained"] - r["items"]["start"]).mean()) for r in rs]
        lines.append(
            f"| {method} | {len(rs)} | {', '.join(f'{g:+.2f}' for g in gains)} | {sum(g < 0 for g in gains)} "
            f"of {len(rs)} | {last(rs, 'kl/behavior_to_sft')} | {last(rs, 'kl/behavior')} |"
        )
    return lines + [
        "",
        "Per seed. KL(behavior || SFT): how far the model that sampled the last phase's pairs had moved from the "
        "SFT (0 at F = 1, where it is the SFT); KL(behavior || policy): how far the policy then was from that "
        "sampler (at F = 1, from the SFT itself). Nats per response, on the last step's sampled pairs (an earlier "
        "step, named, where the last kept none): the mean log-ratio over responses the behavior model sampled, an "
        "estimate, so a KL near 0 can come out below it.",
    ]


def _start_standing(runs: dict[str, list[dict]]) -> list[str]:
    """How each start model (the SFT responses every run of a method begins from) fares against the human
    reference, by the judge and by the annotator: a method's win rate means little if its start already wins."""
    from bpo.stats import start_groups, win_rate

    groups, lines = start_groups(runs), []
    views = [
        ("the judge", "start", "reference"),
        ("the annotator (the paper's protocol)", "annotator_start", "annotator_reference"),
    ]
    for methods, run in groups:
        items = run["items"]
        said = [
            f"{who} {w['win_rate']:.2f} {_ci(w, '.2f')}"
            for who, a, b in views
            if a in items and b in items
            for w in [win_rate(items[a], items[b])]
        ]
        whose = "(the SFT ensemble's" if len(groups) == 1 else f"of {', '.join(methods)} (its SFT ensemble's"
        lines += ["", f"The start model {whose} greedy responses) beats the human reference on: {'; '.join(said)}."]
    return lines if "reference" in groups[0][1]["items"] else []


def _judges_agree(runs: dict[str, list[dict]]) -> list[str]:
    """How closely the annotator and the judge (``eval.gold``) score the same eval responses: two judges meant
    to be independent that agree almost perfectly are one judge twice (the withdrawn HH grid had r = 0.96).
    Each distinct response counts once: the runs of a start model share its responses, and every run the references."""
    points: dict[tuple, tuple[float, float]] = {}  # (prompt, response) -> (annotator, judge)
    for rs in runs.values():
        for r in rs:
            for i, row in enumerate(r["rows"]):
                for x in ("start", "trained", "reference"):
                    if f"annotator_{x}" in r["items"] and x in r["items"]:
                        text = row.get(f"{x}_response", x)  # the reference is the prompt's own
                        points[(row["id"], text)] = (r["items"][f"annotator_{x}"][i], r["items"][x][i])
    if not points:
        return []
    by_prompt: dict[str, list[tuple[float, float]]] = {}
    for (prompt, _), scores in points.items():
        by_prompt.setdefault(prompt, []).append(scores)
    groups = [np.array(v) for v in by_prompt.values()]  # [responses of one prompt, 2]
    r = float(np.corrcoef(np.concatenate(groups).T)[0, 1])
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(1000):  # prompts resampled with all their responses
        sample = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        boot.append(np.corrcoef(sample.T)[0, 1])
    lo, hi = np.nanquantile(boot, [0.025, 0.975])
    return [
        "",
        f"The annotator and the judge score the same {len(points)} distinct eval responses (start, trained and "
        f"reference, every run) with Pearson r = {r:.2f} [{lo:.2f}, {hi:.2f}] (bootstrap over prompts).",
    ]


def _annotator(cfg) -> str:
    label = ANNOTATOR_KINDS.get(cfg.annotator.kind).label
    return label(cfg.annotator) if label else cfg.annotator.kind


def _made_by(runs: dict[str, list[dict]]) -> list[str]:
    """The judge, the annotator, the code and the torch threads (run.json; older runs lack them) of the runs."""
    every = [r for rs in runs.values() for r in rs]

    def counted(key: str) -> str:
        counts = Counter(str(r["run"].get(key, "not recorded")) for r in every)
        return ", ".join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in sorted(counts.items()))

    return [
        f"Judge of the scores: {', '.join(sorted({r['eval'].get('judge', '?') for r in every}))}; "
        f"annotator: {', '.join(sorted({_annotator(r['config']) for r in every}))}.",
        "",
        f"Code of the runs (`run.json`): {counted('code')}.",
        "",
        f"Torch threads of the runs: {counted('torch_threads')}.",
    ]


def report(
    out: Path,
    command: str,
    seeds: list[int] | None = None,
    methods: list[str] | None = None,
    rebuild: str = "",
    claims: str = "",
    margin: float = 0.15,
) -> Path:
    """Write ``report.md`` and plots from the finished runs under ``out`` (only ``seeds``/``methods``, when given);
    ``rebuild``: the command that rebuilds it from published raw files (said under the grid's own); ``claims``:
    "METHOD>BASELINE,...", each "method beats baseline", said with what its interval supports."""
    runs = _collect(out, seeds, methods)
    if not runs:
        raise ValueError(f"{out}: no finished runs to report")
    table, summary = _method_table(runs)
    lines = [
        "# Method comparison",
        "",
        f"Command: `{command}`",
        *(["", f"Rebuilt from the raw files beside this report (`*/seed*/`) with: `{rebuild}`"] if rebuild else []),
        "",
        *_made_by(runs),
        "",
        "Every method spends the same annotation budget (B*T sampled pairs; identical pairs are not sent to "
        "the annotator, so `annotations` can be lower). Scores are greedy responses on held-out prompts, "
        "judged by the task's judge. A win rate counts wins only (a strictly higher score, the paper's "
        "metric); ties are not wins. `ties` is the share of tied prompts; ties-as-half = win rate + ties / 2.",
        "",
        "Two kinds of interval: *over seeds* treats each training seed's mean as one observation (Student t, "
        "so it includes how much a rerun differs); *pooled prompts* is a percentile bootstrap that resamples "
        "eval prompts with all their seeds together (every seed answers the same prompts from the same start "
        "responses, so a prompt's seeds are not independent; how well the eval set pins the score down, "
        "not the seed spread).",
        "",
        *table,
        *_start_standing(runs),
        *_judges_agree(runs),
    ]
    if "offline-dpo" in runs and len(runs) > 1:
        lines += ["", "## Against offline DPO, seed by seed", "", *_head_to_head(runs, "offline-dpo")]
        lines += [
            "",
            "*Detectable difference*: the smallest true gap that a two-sided 5% paired t-test over these seeds "
            "would find with 80% power, at the observed spread of the per-seed gaps.",
        ]
    lines += ["", "## Drift from the start", "", *_drift(runs)]
    if claims:
        lines += ["", "## Claims", "", *_claims(runs, parse_claims(claims, methods), margin)]
    kinds = {r["config"].annotator.kind for rs in runs.values() for r in rs}
    for kind in sorted(kinds):  # a judge that can say why it scored as it did
        section = ANNOTATOR_KINDS.get(kind).report
        lines += section(runs) if section else []
    lines += ["", "![win rate](win_rate.png)", "", "![training curves](curves.png)", "", CURVES_NOTE, ""]
    plot_win_rates(summary, out / "win_rate.png")
    _plot_curves(runs, out / "curves.png")
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


CURVES_NOTE = "Training curves: the thick line is the mean over seeds, the thin lines of its colour each seed."


def _plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    keys = [
        ("score/behavior_samples", "gold score of the sampled pairs"),
        ("loss", "loss (member mean)"),
        ("kl/behavior", "KL(behavior || policy)"),
        ("kl/behavior_to_sft", "KL(behavior || SFT)"),
    ]
    series = {method: [r["metrics"] for r in rs] for method, rs in runs.items()}
    plot(series, path, keys, phase_marks=False, each_run=True)
