"""What every benchmark script does with its page: write it to ``--out`` (when given) and print it."""

from __future__ import annotations

import argparse
from pathlib import Path


def phase_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of a benchmark that samples one training phase: which preset's prompts, model, prompts, n."""
    parser.add_argument("--task", default="quickstart", help="preset whose training prompts and sampling are used")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=64, help="a phase's prompts (quickstart: B*T/F = 64)")
    parser.add_argument("--n", type=int, default=2)
    return parser


def publish(title: str, intro: str, body: list[str], out: Path | None) -> str:
    """The page: a title, what was run and where, then the tables and notes; returns its text."""
    text = "\n".join([f"# {title}", "", intro, "", *body, ""])
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)
    return text
