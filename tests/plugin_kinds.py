"""A plugin from outside the package: a task and its exact judge, registered the way a user's package would.

Nothing under src/ names them; ``test_plugins.py`` imports this module and trains with them.
"""

from bpo.annotators import ScoreAnnotator, register_annotator
from bpo.data import PromptRecord
from bpo.registry import TASKS, Task

WORDS = "apple river stone cloud maple ember violet harbor lantern meadow quartz willow".split()


def prompts(cfg, role: str, n: int) -> list[PromptRecord]:
    """``Say W.`` for a word W; the reference says it. Each role has its own prompts."""
    offset = {"train": 0, "sft": 1000, "eval": 2000}[role]
    out = []
    for i in range(n):
        word = WORDS[(i + offset + cfg.seed) % len(WORDS)]
        out.append(PromptRecord(f"echo-{role}-{i}", f"Say {word}.", f"{word}"))
    return out


def score(record: PromptRecord, response: str) -> float:
    """The exact judge: 1 for saying the word, minus a little per character (shorter is better)."""
    word = record.prompt.removeprefix("Say ").removesuffix(".")
    return float(word in response) - 0.01 * len(response)


TASKS.register("echo", Task(prompts, "the echo task's prompts"))
register_annotator(
    "echo_judge",
    lambda cfg: ScoreAnnotator(score, "echo-judge"),
    help="the echo task's exact judge (says the word, short)",
    task="echo",
)
