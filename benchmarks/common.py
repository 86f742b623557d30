"""What every benchmark script does with its page: write it to ``--out`` (when given) and print it."""

from __future__ import annotations

from pathlib import Path


def publish(title: str, intro: str, body: list[str], out: Path | None) -> str:
    """The page: a title, what was run and where, then the tables and notes; returns its text."""
    text = "\n".join([f"# {title}", "", intro, "", *body, ""])
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)
    return text
