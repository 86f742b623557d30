import random

import pytest

from bpo.tasks.quickstart import QuickstartTask, judge, judge_parts, make_post, make_posts, reference


@pytest.fixture()
def post():
    return make_post(random.Random(5), "t-0")


def test_posts_are_seeded_and_state_their_facts():
    a, b = make_posts(20, 0, "train"), make_posts(20, 0, "train")
    assert a == b and make_posts(20, 1, "train") != a and make_posts(20, 0, "eval") != a
    for p in a:
        lower = p.text.lower()
        assert all(f in lower for f in p.facts.values())
        assert len(p.distractors) in (4, 6)


def test_judge_hand_values(post):
    f = post.facts
    name, city = f["who"].capitalize(), f["where"].capitalize()
    perfect = f"{name} {f['what']} {city} {f['when']} {f['why']}"  # 5 words, every fact
    assert judge(post, perfect) == pytest.approx(5 - 0.05)
    assert judge(post, f"{name} did a {f['what']}") == pytest.approx(2 - 0.04)
    # a distractor from the post costs what a fact earns
    distractor = post.distractors[0].capitalize()
    assert judge(post, f"{name} {distractor}") == pytest.approx(1 - 1 - 0.02)
    # an invented name, anywhere, even at the start of the sentence
    assert judge(post, f"Bob and {name}") == pytest.approx(1 - 1 - 0.03)
    # length: 0.01 a word, plus 0.2 a word past 25
    long = " ".join([name] + ["word"] * 29)  # 30 words
    assert judge(post, long) == pytest.approx(1 - 0.30 - 0.2 * 5)
    assert judge(post, "") == 0.0
    assert judge_parts(post, f"Bob and {name} {distractor}") == {
        "facts": 1,
        "distractors": 1,
        "invented": 1,
        "words": 4,
    }


def test_references_are_imperfect_but_true():
    task = QuickstartTask(0)
    records = task.prompts("sft", 40)
    scores = [task.score(r, r.reference) for r in records]
    assert all(s >= 1.9 for s in scores)  # always who and what, nothing invented
    assert 2.5 < sum(scores) / len(scores) < 3.5  # but on average only about three of five facts
    rec = records[3]
    assert task.post(rec.id).facts["who"] in rec.reference.lower()
    assert rec.prompt.startswith("Summarize this post")


def test_task_rebuilds_posts_from_ids():
    task = QuickstartTask(3)
    rec = task.prompts("eval", 10)[7]
    fresh = QuickstartTask(3)
    assert fresh.post(rec.id) == task.post(rec.id)
    assert reference(task.post(rec.id), random.Random(0)).endswith(".")
