"""How much of a grid's gold gain goes with response length, from its published raw files.

    python scripts/grid-lengths.py docs/results/hh-harmless/grid

Per method, pooled over its seeds: mean characters of the start and trained greedy responses, the
Pearson r between a trained response's length and its gold score, and the r between a prompt's gold
gain and its length change. A judge that rewards length alone would show r near 1 in both.
"""

import gzip
import json
import statistics
import sys
from pathlib import Path


def rows(grid: Path, method: str) -> tuple[list[dict], int]:
    """A method's eval items over its seeds, and how many seeds."""
    files, out = sorted((grid / method).glob("seed*/eval_items.jsonl.gz")), []
    for items in files:
        with gzip.open(items, "rt") as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out, len(files)


def main(grid: Path) -> None:
    methods = sorted(p.name for p in grid.iterdir() if any(p.glob("seed*/eval_items.jsonl.gz")))
    if not methods:
        sys.exit(f"error: no */seed*/eval_items.jsonl.gz under {grid}; pass a published grid folder")
    print("| method | seeds | items | chars, start -> trained | r(length, gold), trained | r(gain, length change) |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for m in methods:
        rs, seeds = rows(grid, m)
        start = [len(r["start_response"]) for r in rs]
        trained = [len(r["trained_response"]) for r in rs]
        r_len = statistics.correlation(trained, [r["trained"] for r in rs])
        r_gain = statistics.correlation(
            [t - s for s, t in zip(start, trained)], [r["trained"] - r["start"] for r in rs]
        )
        print(
            f"| {m} | {seeds} | {len(rs)} | {statistics.mean(start):.0f} -> {statistics.mean(trained):.0f} "
            f"| {r_len:.2f} | {r_gain:.2f} |"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("error: usage: python scripts/grid-lengths.py GRID_DIR (a folder published by paper-grid.sh)")
    main(Path(sys.argv[1]))
