"""The README's command lines stay true: every `bpo ...` names a real command and real options,
every script it runs exists, and every preset it names loads."""

import re
import shlex
from pathlib import Path

import typer

from bpo.cli import app
from bpo.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The lines of the README's bash blocks, continuations joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def bpo_calls(lines: list[str]) -> list[list[str]]:
    calls = []
    for line in lines:
        words = shlex.split(line, comments=True)
        for i, w in enumerate(words):
            if w == "bpo" or (w == "bpo.cli" and i and words[i - 1] == "-m"):
                calls.append(words[i + 1 :])
                break
    return calls


def test_every_bpo_line_names_a_command_and_its_options():
    root = typer.main.get_command(app)
    calls = bpo_calls(readme_commands())
    assert len(calls) > 20  # the README's command list is read
    for words in calls:
        command, rest = root, list(words)
        while rest and rest[0] in getattr(command, "commands", {}):
            command = command.commands[rest.pop(0)]
        assert command is not root or not rest, f"`bpo {' '.join(words)}`: no such command"
        known = {opt for p in command.params for opt in getattr(p, "opts", [])}
        for word in rest:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"`bpo {' '.join(words)}`: no option {word}"
            elif "=" not in word and "/" not in word and not word.startswith(("$", "-")):
                if command.name in ("train", "sft", "compare", "eval"):
                    if word == rest[0] and not word.endswith((".yaml", ".yml")):
                        assert word in PRESETS, f"`bpo {' '.join(words)}`: {word} is not a preset"


def test_every_script_the_readme_runs_exists():
    for line in readme_commands():
        for script in re.findall(r"bash (scripts/\S+\.sh)", line):
            assert (ROOT / script).is_file(), script
