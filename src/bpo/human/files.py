"""Labels to and from other tools: ``bpo label RUN --export FILE`` / ``--import FILE``.

Export writes the pairs that wait for people as JSONL (``{id, phase, prompt_id, prompt,
responses}``) and, beside it, Label Studio's task JSON and a labelling config (Pairwise of the two
texts plus a tie box). Import reads labels back, from plain JSONL (``{id, choice, labeller?}``,
``choice`` 0 or 1 indexing ``responses`` as exported, or "tie") or from Label Studio's JSON export.
A file is checked whole before anything is written: an unknown id, a pair twice for one labeller,
or a pair labelled already is refused with its line, and nothing of the file is taken.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bpo.human.labels import LabelError, LabelStore
from bpo.io import write_jsonl, write_text_atomic

LABEL_STUDIO_CONFIG = """<View>
  <Header value="Which response is better?"/>
  <Text name="prompt" value="$prompt"/>
  <Pairwise name="pairwise" toName="text1,text2"/>
  <Text name="text1" value="$text1"/>
  <Text name="text2" value="$text2"/>
  <Choices name="tie" toName="prompt" choice="single"><Choice value="tie"/></Choices>
</View>
"""


def export(store: LabelStore, path: Path) -> list[Path]:
    """Write the open pairs as JSONL and as Label Studio tasks; returns the files written."""
    state = store.current()
    todo = sorted(
        (i for i in store.items.values() if store.open(i) and not store.done(i, state)),
        key=lambda i: (i.phase, i.index),
    )
    write_jsonl(
        path,
        (
            {"id": i.id, "phase": i.phase, "prompt_id": i.prompt_id, "prompt": i.prompt, "responses": i.responses}
            for i in todo
        ),
    )
    tasks = [
        {"data": {"bpo_id": i.id, "prompt": i.prompt, "text1": i.responses[i.left], "text2": i.responses[1 - i.left]}}
        for i in todo
    ]
    studio, config = path.with_suffix(".labelstudio.json"), path.with_suffix(".labelstudio.xml")
    write_text_atomic(studio, json.dumps(tasks, indent=1))
    write_text_atomic(config, LABEL_STUDIO_CONFIG)
    return [path, studio, config]


def _label_studio_rows(tasks: list[dict[str, Any]], store: LabelStore, where: str) -> list[tuple[str, dict]]:
    """(where, {id, choice, labeller}) per annotation in a Label Studio export (cancelled ones skipped)."""
    rows = []
    for n, task in enumerate(tasks, start=1):
        pair = (task.get("data") or {}).get("bpo_id")
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            who = ann.get("completed_by")
            who = who.get("email") or who.get("id") if isinstance(who, dict) else who
            choice: Any = "missing"
            for r in ann.get("result") or []:
                value = r.get("value") or {}
                if r.get("type") == "pairwise" and value.get("selected") in ("left", "right"):
                    item = store.items.get(pair)
                    side = 0 if value["selected"] == "left" else 1
                    choice = None if item is None else (item.left if side == 0 else 1 - item.left)
                elif r.get("type") == "choices" and "tie" in value.get("choices", []):
                    choice = "tie"
            rows.append((f"{where} task {n}", {"id": pair, "choice": choice, "labeller": f"labelstudio:{who}"}))
    return rows


def read_labels(path: Path, store: LabelStore, labeller: str) -> list[tuple[str, dict]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return _label_studio_rows(json.loads(text), store, str(path))
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise LabelError(f"{path}:{n}: not JSON ({err.msg})") from None
            rows.append((f"{path}:{n}", {"labeller": labeller, **row} if isinstance(row, dict) else row))
    return rows


def import_labels(store: LabelStore, path: Path, labeller: str) -> int:
    """Check every label in ``path`` against the queue, then record them all; returns how many."""
    state, seen, taken = store.current(), set(), []
    count = {pid: len(store.labels(pid, state)) for pid in store.items}
    for where, row in read_labels(path, store, labeller):
        if not isinstance(row, dict):
            raise LabelError(f"{where}: not a JSON object; nothing imported")
        pair, who, choice = row.get("id"), str(row.get("labeller") or labeller), row.get("choice", "missing")
        item = store.items.get(pair)
        if item is None or not store.open(item):
            raise LabelError(
                f"{where}: pair id {pair!r} is not waiting for labels in {store.queue.dir}; nothing imported"
            )
        # only 0, 1 or "tie": a row without a choice, or with null, is not a tie someone gave
        if choice not in (0, 1, "tie") or isinstance(choice, bool):
            shown = "no choice" if choice == "missing" else f"choice {choice!r}"
            raise LabelError(f'{where}: {shown} is not 0, 1 or "tie"; nothing imported')
        choice = None if choice == "tie" else choice
        mine = state.get(pair, {}).get(who)
        if (pair, who) in seen or (mine is not None and not mine.skip):
            raise LabelError(f"{where}: {who} labelled pair {pair} already (a duplicate); nothing imported")
        if count[pair] >= store.overlap:
            raise LabelError(f"{where}: pair {pair} has its {store.overlap} label(s) already; nothing imported")
        seen.add((pair, who))
        count[pair] += 1
        taken.append((who, pair, choice))
    for who, pair, choice in taken:
        store.add(who, pair, choice, source=f"import:{path.name}")
    return len(taken)
