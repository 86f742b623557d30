"""Raw files beside a published grid report: what a reader needs to recompute every table.

``bpo compare ... --publish DIR`` (:func:`publish_grid`) copies, for each finished run, its config, run summary and
evaluation, its per-step metrics and per-prompt eval items (gzipped), and a summary of its
annotation ledger, to ``DIR/<method>/seed<k>/``: the layout of a grid, so that
``bpo compare CONFIG --report-only --out DIR`` rebuilds the report from them alone.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from bpo.io import read_jsonl, write_json

COPIED = ("config.yaml", "run.json", "eval.json")
PACKED = ("metrics.jsonl", "eval_items.jsonl")
LEDGER = "ledger-summary.json"
GRID = "grid.json"  # the command that ran the grid


def ledger_summary(path: Path) -> dict:
    """What the run's annotation ledger holds, in figures: pairs by outcome, annotator calls, and per phase
    the judged pairs' mean scores (chosen, rejected) and mean score gap, plus the file's sha256."""
    rows = read_jsonl(path)
    header = rows[0] if rows and "ledger" in rows[0] else {}
    entries = rows[1:] if header else rows
    out: dict = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "fingerprint": header.get("fingerprint")}
    outcomes = {"judged": 0, "identical": 0, "tie": 0, "invalid": 0, "unlabelled": 0}
    for e in entries:
        key = (
            "identical"
            if e.get("identical")
            else "judged"
            if e.get("choice") is not None
            else e.get("unjudged") or "tie"
        )
        outcomes[key] += 1
    out.update(
        pairs=len(entries), outcomes=outcomes, calls=sum(e.get("calls", 1) for e in entries if not e.get("identical"))
    )
    phases = []
    for phase in sorted({e["phase"] for e in entries}):
        mine = [e for e in entries if e["phase"] == phase]
        scored = [e for e in mine if e.get("choice") is not None and e.get("scores")]
        row = {"phase": phase, "pairs": len(mine), "judged": sum(e.get("choice") is not None for e in mine)}
        if scored:
            chosen = [e["scores"][e["choice"]] for e in scored]
            rejected = [e["scores"][_rejected(e)] for e in scored]
            row.update(
                mean_score_chosen=float(np.mean(chosen)),
                mean_score_rejected=float(np.mean(rejected)),
                mean_score_gap=float(np.mean(np.subtract(chosen, rejected))),
            )
        phases.append(row)
    out["phases"] = phases
    return out


def _rejected(entry: dict) -> int:
    return 1 - entry["choice"] if entry.get("rejected") is None else entry["rejected"]


def publish_grid(
    grid: Path, dest: Path, config: str, seeds: list[int], methods: list[str], command: str, claims: str = ""
) -> Path:
    """``bpo compare --publish DEST``: the raw files of the grid's finished runs in ``dest`` (same layout) and a
    report built from them alone, which names the command that rebuilds it. The report covers every seed
    published there for these methods, so seeds run by later calls join the earlier ones."""
    from bpo.eval.grid_report import report

    copy_raw(grid, dest, [grid / m / f"seed{k}" for k in seeds for m in methods])
    every = sorted({int(f.name.removeprefix("seed")) for m in methods for f in (dest / m).glob("seed*")})
    listed = f"--methods {','.join(methods)} --seeds {','.join(map(str, every))}"
    again = f"bpo compare {config} --report-only --out {dest} {listed}" + (f" --claims '{claims}'" if claims else "")
    write_json(dest / GRID, {"command": command})
    return report(dest, command, every, methods, again, claims)


def grid_command(folder: Path) -> str | None:
    """The command that ran the grid published in ``folder`` (None where none is): a report rebuilt there
    names it, as the published one does, and not the rebuilding command in its place."""
    path = folder / GRID
    return json.loads(path.read_text())["command"] if path.exists() else None


def copy_raw(grid: Path, dest: Path, folders: list[Path]) -> list[Path]:
    """Copy the raw files of the finished runs ``folders`` (under ``grid``) to ``dest``, same layout."""
    written = []
    for folder in folders:
        if not (folder / "eval.json").exists():
            continue
        target = dest / folder.relative_to(grid)
        target.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            if (folder / name).exists():
                (target / name).write_bytes((folder / name).read_bytes())
        for name in PACKED:  # mtime 0: the same run gives the same bytes
            (target / f"{name}.gz").write_bytes(gzip.compress((folder / name).read_bytes(), mtime=0))
        if (folder / "annotations.jsonl").exists():
            write_json(target / LEDGER, ledger_summary(folder / "annotations.jsonl"))
        written.append(target)
    return written
