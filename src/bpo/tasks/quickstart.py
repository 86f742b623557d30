"""The embedded default task: summarise short generated posts, judged exactly.

Each post states five key facts (who did what, where, when and why) among distracting detail
that names other people and places. The judge scores a summary by the facts it states, in the
right role, and penalises distractor entities, invented names and length past a budget. It needs
nothing from outside, so ``bpo train`` runs anywhere, and the gold score is exact.

SFT references are deliberately imperfect: they always say who did what, and only sometimes
where, when or why. Members SFT'd on them learn the format (one short sentence, then stop) but
leave about two facts on the table, which is the room preference training has to find.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from bpo.annotators import Annotator, ScoreAnnotator, register_annotator
from bpo.config import Config, DataConfig
from bpo.data import PromptRecord
from bpo.registry import TASKS, Task
from bpo.stats import start_groups

NAMES = """Aisha Ben Carla Dmitri Elena Farid Greta Hugo Ines Jonas Kofi Lena Mateo Nadia Omar Priya Quinn Rosa
Sven Tara Umar Vera Wanda Xavier Yara Zeke Amir Bianca Chen Daria Emil Fatima Gabe Hana Ivan Julia Kai Lucia Marek
Nina Oscar Paula Rafael Sofia Tomas Ulla Viktor Wen Yusuf Zora""".split()
CITIES = """Oslo Lima Riga Porto Kyoto Dakar Quito Perth Austin Zagreb Tunis Accra Hanoi Lyon Bergen Malmo Tartu Gdansk
Leeds Cork Basel Graz Turin Bilbao Split Izmir Nantes Aarhus Krakow Vilnius Cusco Mombasa Denver Halifax Dunedin
Nagoya Busan Pune Kazan Ghent""".split()
# (verb phrase, key word the summary must contain)
EVENTS = [
    ("baked a wedding cake", "cake"),
    ("ran a marathon", "marathon"),
    ("painted a mural", "mural"),
    ("opened a bakery", "bakery"),
    ("adopted a puppy", "puppy"),
    ("built a treehouse", "treehouse"),
    ("planted an orchard", "orchard"),
    ("organised a concert", "concert"),
    ("repaired a bicycle", "bicycle"),
    ("wrote a novel", "novel"),
    ("climbed a glacier", "glacier"),
    ("sold a sculpture", "sculpture"),
    ("hosted a quiz", "quiz"),
    ("knitted a blanket", "blanket"),
    ("launched a podcast", "podcast"),
    ("restored a piano", "piano"),
    ("sewed a costume", "costume"),
    ("cleaned a beach", "beach"),
    ("coached a choir", "choir"),
    ("won a chess tournament", "chess"),
    ("started a garden", "garden"),
    ("fixed a boat", "boat"),
    ("filmed a documentary", "documentary"),
    ("taught a yoga class", "yoga"),
    ("brewed a cider", "cider"),
    ("carved a canoe", "canoe"),
    ("designed a poster", "poster"),
    ("rescued a kitten", "kitten"),
    ("recorded an album", "album"),
    ("translated a poem", "poem"),
    ("repainted a caravan", "caravan"),
    ("organised a picnic", "picnic"),
    ("built a robot", "robot"),
    ("cooked a banquet", "banquet"),
    ("found a fossil", "fossil"),
    ("sang at a festival", "festival"),
    ("led a hike", "hike"),
    ("made a quilt", "quilt"),
    ("drew a comic", "comic"),
    ("restored a tractor", "tractor"),
]
# (phrase, key word)
TIMES = [
    ("on Monday", "monday"),
    ("on Tuesday", "tuesday"),
    ("on Wednesday", "wednesday"),
    ("on Thursday", "thursday"),
    ("on Friday", "friday"),
    ("on Saturday", "saturday"),
    ("on Sunday", "sunday"),
    ("last night", "night"),
    ("in January", "january"),
    ("in March", "march"),
    ("in April", "april"),
    ("in June", "june"),
    ("in August", "august"),
    ("in October", "october"),
    ("in December", "december"),
    ("at dawn", "dawn"),
    ("at midnight", "midnight"),
    ("last winter", "winter"),
    ("last summer", "summer"),
    ("in spring", "spring"),
]
# (clause after "because", key word)
REASONS = [
    ("the local shelter needed money", "shelter"),
    ("a friend was getting married", "married"),
    ("the school asked for help", "school"),
    ("the hospital wanted cheerful walls", "hospital"),
    ("grandma had always dreamed of it", "grandma"),
    ("the library was closing", "library"),
    ("the village lost its festival", "village"),
    ("a neighbour was sick", "neighbour"),
    ("the club needed new members", "club"),
    ("a charity raised funds", "charity"),
    ("the mayor made a bet", "mayor"),
    ("the team lost a bet", "bet"),
    ("a storm ruined the old one", "storm"),
    ("the museum asked for it", "museum"),
    ("the children were bored", "children"),
    ("a teacher retired", "teacher"),
    ("the farm needed visitors", "farm"),
    ("a cousin was visiting", "cousin"),
    ("the bakery owner was ill", "owner"),
    ("a student won a prize", "prize"),
    ("the river flooded", "river"),
    ("the town celebrated its anniversary", "anniversary"),
    ("a promise was made years ago", "promise"),
    ("the rent went up", "rent"),
    ("the kids wanted a surprise", "surprise"),
    ("a refugee family arrived", "refugee"),
    ("the choir needed funds", "funds"),
    ("the old bridge was closing", "bridge"),
    ("a record was at stake", "record"),
    ("the doctor recommended it", "doctor"),
]
OPENERS = ["Quick story from this week.", "Something nice happened here.", "Not sure where else to post this.", ""]
DISTRACTORS = [
    "{n} from {c} had tried the same thing years ago.",
    "My cousin {n} was visiting from {c} at the time.",
    "{n} said the weather in {c} was terrible that week.",
    "Someone called {n} wrote about it on a forum in {c}.",
    "Apparently {n} is planning a trip to {c} next year.",
]
INSTRUCTION = "Summarize this post in one short sentence. Say who did what, where, when and why."
WORD_BUDGET = 25
COMMON = set(
    """i a an the he she they it we you his her their my our on in at last this that then and but so to of for with
    from by because after before summary post who what where when why monday tuesday wednesday thursday friday saturday
    sunday january february march april may june july august september october november december""".split()
)


@dataclass(frozen=True)
class Post:
    id: str
    text: str
    facts: dict[str, str]  # role -> key word
    distractors: tuple[str, ...]  # names and places in the post that are not key facts


def make_post(rng: random.Random, pid: str) -> Post:
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    event, event_key = rng.choice(EVENTS)
    when, when_key = rng.choice(TIMES)
    reason, reason_key = rng.choice(REASONS)
    style = rng.randrange(3)
    if style == 0:
        core = f"{name} {event} in {city} {when}."
    elif style == 1:
        core = f"{when[0].upper() + when[1:]}, {name} {event} in {city}."
    else:
        core = f"In {city}, {name} {event} {when}."
    why = f"{name} did it because {reason}." if rng.random() < 0.5 else f"The reason: {reason}."
    others_n = [n for n in NAMES if n != name]
    others_c = [c for c in CITIES if c != city]
    distract, entities = [], []
    for tmpl in rng.sample(DISTRACTORS, rng.randint(2, 3)):
        n, c = rng.choice(others_n), rng.choice(others_c)
        distract.append(tmpl.format(n=n, c=c))
        entities += [n, c]
    sentences = [core, why, *distract]
    rest = sentences[1:]
    rng.shuffle(rest)
    body = " ".join([rng.choice(OPENERS), sentences[0], *rest]).strip()
    facts = {"who": name.lower(), "what": event_key, "where": city.lower(), "when": when_key, "why": reason_key}
    return Post(pid, body, facts, tuple(e.lower() for e in entities))


def make_posts(n: int, seed: int, prefix: str) -> list[Post]:
    rng = random.Random(f"{prefix}-{seed}")
    return [make_post(rng, f"{prefix}-{i}") for i in range(n)]


def to_prompt(post: Post) -> str:
    return f"{INSTRUCTION}\n\n{post.text}"


def reference(post: Post, rng: random.Random) -> str:
    """An imperfect reference: who and what always; where, when, why each only sometimes."""
    event = next(e for e, k in EVENTS if k == post.facts["what"])
    name = next(n for n in NAMES if n.lower() == post.facts["who"])
    parts = [f"{name} {event}"]
    if rng.random() < 0.4:
        parts.append(f"in {next(c for c in CITIES if c.lower() == post.facts['where'])}")
    if rng.random() < 0.3:
        parts.append(next(t for t, k in TIMES if k == post.facts["when"]))
    sentence = " ".join(parts)
    if rng.random() < 0.3:
        sentence += " because " + next(r for r, k in REASONS if k == post.facts["why"])
    return sentence + "."


WORD = re.compile(r"[A-Za-z']+")


def judge_parts(post: Post, summary: str) -> dict[str, int]:
    """What the judge counts in a summary: facts stated, distractors, invented names, words."""
    words = WORD.findall(summary)
    lower = [w.lower() for w in words]
    present = set(lower)
    post_words = {w.lower() for w in WORD.findall(post.text)}
    invented = {w.lower() for w in words if w[0].isupper() and w.lower() not in post_words and w.lower() not in COMMON}
    invented |= {w for w in present if w.capitalize() in NAMES or w.capitalize() in CITIES} - post_words
    return {
        "facts": sum(f in present for f in post.facts.values()),
        "distractors": sum(e in present for e in set(post.distractors)),
        "invented": len(invented),
        "words": len(words),
    }


def judge(post: Post, summary: str) -> float:
    """Gold score: +1 per key fact stated; -1 per distractor or invented name/place; length costs.

    Facts are whole words, case-insensitive. A distractor entity in the summary usually means a
    fact in the wrong role ("Zeke from Riga"), so it costs what a fact earns. Any capitalised word
    that is not in the post and not a common word counts as invented. Each word costs 0.01 (this
    breaks most ties between otherwise equal summaries) and each word past the budget 0.2 more.
    """
    p = judge_parts(post, summary)
    score = p["facts"] - p["distractors"] - p["invented"] - 0.01 * p["words"] - 0.2 * max(0, p["words"] - WORD_BUDGET)
    return round(float(score), 4)


class QuickstartTask:
    """Prompts, SFT references and the judge of the embedded task, as the trainer needs them."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._posts: dict[str, Post] = {}

    def prompts(self, split: str, n: int) -> list[PromptRecord]:
        posts = make_posts(n, self.seed, split)
        rng = random.Random(f"ref-{split}-{self.seed}")
        out = []
        for p in posts:
            self._posts[p.id] = p
            out.append(PromptRecord(p.id, to_prompt(p), reference(p, rng)))
        return out

    def post(self, record_id: str) -> Post:
        if record_id not in self._posts:  # ids encode split and index, so any id can be rebuilt
            split, idx = record_id.rsplit("-", 1)
            for p in make_posts(int(idx) + 1, self.seed, split):
                self._posts[p.id] = p
        return self._posts[record_id]

    def score(self, record: PromptRecord, response: str) -> float:
        try:
            post = self.post(record.id)
        except (ValueError, IndexError):
            post = None
        if post is None or to_prompt(post) != record.prompt:  # another task's record: its score would be nonsense
            raise ValueError(
                f"the quickstart judge scores only the embedded task's posts; record {record.id!r} is not one "
                "(use annotator.kind=reward_model or callable for your own data)"
            )
        return judge(post, response)


def breakdown(runs: dict[str, list[dict]]) -> list[str]:
    """What the trained greedy responses contain, by the quickstart judge's own counts.

    A score says how good a response is; this says why: a policy that drifts from its data
    tends to pad, copy distractors from the post or invent names, and that shows here first.
    """
    lines = [
        "",
        "## What the trained responses contain (quickstart judge's counts, mean per response)",
        "",
        "| method | seeds | facts (of 5) | distractors | invented names | words | per seed: facts / distractors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for method, rs in runs.items():
        per_seed = []
        for r in rs:
            if r["config"].annotator.kind != "quickstart" or "trained_response" not in r["rows"][0]:
                continue
            parts = _parts(r, "trained_response")
            per_seed.append({"seed": r["seed"], **{k: np.mean([p[k] for p in parts]) for k in parts[0]}})
        if not per_seed:
            continue
        mean = {k: np.mean([p[k] for p in per_seed]) for k in per_seed[0]}
        seeds_txt = ", ".join(f"s{p['seed']}: {p['facts']:.2f} / {p['distractors']:.2f}" for p in per_seed)
        lines.append(
            f"| {method} | {len(per_seed)} | {mean['facts']:.2f} | {mean['distractors']:.2f} | "
            f"{mean['invented']:.2f} | {mean['words']:.1f} | {seeds_txt} |"
        )
    if len(lines) == 5:  # the header only: no run judged by this task
        return []
    judged = [(m, r) for m, r in start_groups(runs) if r["config"].annotator.kind == "quickstart"]
    groups = [(m, r) for m, r in judged if "start_response" in r["rows"][0]]
    for methods, r in reversed(groups):  # one row per start model: K = 1 and 5 start from other SFT ensembles
        parts = _parts(r, "start_response")
        s = {k: np.mean([p[k] for p in parts]) for k in parts[0]}
        whose = "start" if len(groups) == 1 else f"start of {', '.join(methods)}"
        row = f"| {s['facts']:.2f} | {s['distractors']:.2f} | {s['invented']:.2f} | {s['words']:.1f} | |"
        lines.insert(5, f"| {whose} (SFT) | - {row}")
    return lines


def _parts(run: dict, column: str) -> list[dict[str, int]]:
    """The judge's counts for each eval response of ``run`` in ``column`` (start_response, trained_response)."""
    task = QuickstartTask(run["config"].data.seed)
    return [judge_parts(task.post(row["id"]), row[column]) for row in run["rows"]]


def _prompts(cfg: DataConfig, role: str, n: int) -> list[PromptRecord]:
    return QuickstartTask(cfg.seed).prompts(role, n)


def _judge(cfg: Config) -> Annotator:
    return ScoreAnnotator(QuickstartTask(cfg.data.seed).score, "quickstart-judge")  # the task that made the posts


TASKS.register("quickstart", Task(_prompts, "the embedded task's posts"))
register_annotator(
    "quickstart",
    _judge,
    help="the embedded task's exact judge (facts stated, distractors, length); only for data.*=quickstart",
    task="quickstart",
    report=breakdown,
)
