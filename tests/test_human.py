"""annotator.kind=human: the run stops at each phase, people's labels (as the store records them) train it."""

import json
import shutil

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from bpo.cli import app
from bpo.human.labels import LabelError, LabelStore, kappa
from bpo.train.ledger import AnnotationLog

runner = CliRunner()


def human_run(tmp_path, **over):
    return tiny_config(tmp_path, **{"annotator.kind": "human", **over})


def label_all(run, who="ana", pick=lambda item: 0):
    """Label every open pair as ``pick(item)`` says (a sampled-order index); returns {pair id: choice}."""
    store, given = LabelStore(run), {}
    while (item := store.next_item(who)) is not None:
        store.add(who, item.id, pick(item))
        given[item.id] = pick(item)
    return given


def test_a_human_run_waits_at_each_phase_and_trains_on_exactly_the_labels_given(tmp_path):
    over, run = human_run(tmp_path), tmp_path / "run"
    res = runner.invoke(app, ["train", *over, "--no-eval"])
    assert res.exit_code == 0, res.output
    assert "waiting for labels" in res.output and f"bpo label {run}" in res.output
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "waiting for labels" and status["phase"] == 0 and status["labelled"] == 0
    assert not (run / "checkpoints").exists()  # nothing trained yet
    again = runner.invoke(app, ["train", *over, "--no-eval"])  # a new run in this folder is refused
    assert again.exit_code == 2 and "--resume" in again.output

    longer = lambda item: int(len(item.responses[1]) > len(item.responses[0]))  # noqa: E731
    given = label_all(run, pick=longer)
    assert given
    res = runner.invoke(app, ["train", "--resume", str(run), "--no-eval"])
    assert res.exit_code == 0, res.output
    assert "phase 2 of 2 waits for labels" in res.output  # phase 0 trained, stopped at phase 1
    given.update(label_all(run, who="bo", pick=longer))
    res = runner.invoke(app, ["train", "--resume", str(run), "--no-eval"])
    assert res.exit_code == 0, res.output
    assert (run / "final" / "behavior").is_dir() and not (run / "status.json").exists()

    log = AnnotationLog(run / "annotations.jsonl")
    people = {f"{e.phase}-{e.index}": e for e in log.entries if e.labels}
    assert people.keys() == given.keys()  # every label given is in the ledger, once
    for pid, e in people.items():
        assert e.choice == given[pid] and len(e.labels) == 1
        assert e.labels[0]["labeller"] == ("ana" if e.phase == 0 else "bo")
    assert all(e.identical for e in log.entries if not e.labels)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_the_store_refuses_doubles_and_undo_reopens_a_pair(tmp_path):
    over, run = human_run(tmp_path, **{"annotator.overlap": 2}), tmp_path / "run"
    assert runner.invoke(app, ["train", *over, "--no-eval"]).exit_code == 0
    store = LabelStore(run, overlap=2)
    first = store.next_item("ana")
    assert store.next_item("bo").id != first.id  # leased to ana for a while
    store.add("ana", first.id, 1)
    with pytest.raises(LabelError, match="already"):
        store.add("ana", first.id, 0)
    assert store.undo("ana") == first.id
    assert store.next_item("ana").id == first.id  # back to ana
    store.add("ana", first.id, 0)
    store.add("bo", first.id, None)
    with pytest.raises(LabelError, match="has its 2 label"):
        store.add("cy", first.id, 1)
    choice, got = store.verdict(store.items[first.id], store.current())
    assert choice is None and [e.labeller for e in got] == ["ana", "bo"]  # 1 vs tie: no majority
    assert LabelStore(run, overlap=2).labels(first.id) == got  # read back from disk


def test_cohens_kappa():
    assert kappa([0, 1, 0, 1], [0, 1, 0, 1]) == 1
    assert kappa([0, 0, 1, 1], [0, 1, 0, 1]) == 0
    assert kappa([0, 0], [0, 0]) is None
    # a worked example: po = 0.7, pe = 0.5*0.6 + 0.5*0.4 = 0.5, kappa = 0.4
    assert kappa([0] * 5 + [1] * 5, [0, 0, 0, 0, 1, 0, 0, 1, 1, 1]) == pytest.approx(0.4)


def test_compare_refuses_a_human_annotator_before_any_run(tmp_path):
    res = runner.invoke(app, ["compare", "quickstart", "annotator.kind=human", "--seeds", "0", "--out", str(tmp_path)])
    assert res.exit_code == 2 and res.output.startswith("error: bpo compare runs its grid unattended")
    assert not any(tmp_path.iterdir())


def test_a_ledger_cut_mid_phase_is_completed_from_the_queue_never_doubled(tmp_path):
    over, run = human_run(tmp_path, **{"train.phases": 1, "train.steps": 2}), tmp_path / "run"
    assert runner.invoke(app, ["train", *over, "--no-eval"]).exit_code == 0
    label_all(run)
    assert runner.invoke(app, ["train", "--resume", str(run), "--no-eval"]).exit_code == 0
    ledger = run / "annotations.jsonl"
    whole = ledger.read_text().splitlines(keepends=True)
    assert len(whole) >= 4
    ledger.write_text("".join(whole[:3]))  # the header and two pairs: the rest lost mid-append
    for gone in ("checkpoints", "final"):  # ...before any checkpoint saw them
        shutil.rmtree(run / gone)
    (run / "run.json").unlink()
    res = runner.invoke(app, ["train", "--resume", str(run), "--no-eval"])
    assert res.exit_code == 0, res.output
    assert ledger.read_text().splitlines(keepends=True) == whole  # completed from the queue, each pair once


def test_a_lowered_quorum_on_resume_trains_on_the_labelled_pairs_only(tmp_path):
    over, run = human_run(tmp_path, **{"train.phases": 1, "train.steps": 2}), tmp_path / "run"
    assert runner.invoke(app, ["train", *over, "--no-eval"]).exit_code == 0
    store = LabelStore(run)
    first = store.next_item("ana")
    store.add("ana", first.id, 1)
    res = runner.invoke(app, ["train", "--resume", str(run), "--no-eval"])
    assert res.exit_code == 0 and "waits for labels: 1 of" in res.output  # quorum 1.0: still waiting
    res = runner.invoke(app, ["train", "--resume", str(run), "--no-eval", "annotator.quorum=0.1"])
    assert res.exit_code == 0 and (run / "final").is_dir(), res.output
    entries = [e for e in AnnotationLog(run / "annotations.jsonl").entries if not e.identical]
    assert [(f"{e.phase}-{e.index}", e.choice) for e in entries if e.choice is not None] == [(first.id, 1)]
    assert all(e.rationale.startswith("not labelled") for e in entries if e.choice is None)


def test_after_a_lowered_quorum_the_trained_phases_leftovers_are_no_longer_offered(tmp_path):
    """With quorum 0.5 the page first offered the trained phase's leftovers, whose labels were never used."""
    over = human_run(tmp_path, **{"train.phases": 2, "train.steps": 2})
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", *over, "--no-eval"]).exit_code == 0
    store = LabelStore(run)
    first = store.next_item("ana")
    store.add("ana", first.id, 0)
    res = runner.invoke(app, ["train", "--resume", str(run), "--no-eval", "annotator.quorum=0.1"])
    assert res.exit_code == 0 and "phase 2 of 2 waits for labels" in res.output, res.output
    store = LabelStore(run)
    leftovers = [i for i in store.items.values() if i.phase == 0 and store.needs_people(i) and i.id != first.id]
    assert leftovers  # phase 0 went on without them
    offered = store.next_item("bo")
    assert offered is not None and offered.phase == 1
    with pytest.raises(LabelError, match="is not waiting for labels"):
        store.add("bo", leftovers[0].id, 1)
    labels = tmp_path / "late.jsonl"
    labels.write_text(json.dumps({"id": leftovers[0].id, "choice": 1}) + "\n")
    from bpo.human.files import export, import_labels

    with pytest.raises(LabelError, match="is not waiting for labels"):
        import_labels(store, labels, "cy")
    export(store, tmp_path / "open.jsonl")
    exported = [json.loads(x)["id"] for x in (tmp_path / "open.jsonl").read_text().splitlines()]
    assert exported and all(x.startswith("1-") for x in exported)


@pytest.mark.parametrize(
    "row, said", [({}, "no choice"), ({"choice": None}, "choice None"), ({"choice": "B"}, "choice 'B'")]
)
def test_import_takes_only_0_1_or_tie(tmp_path, row, said):
    """A row without a choice, or with null, was taken as a tie."""
    from bpo.human.files import import_labels

    over, run = human_run(tmp_path, **{"train.phases": 1, "train.steps": 2}), tmp_path / "run"
    assert runner.invoke(app, ["train", *over, "--no-eval"]).exit_code == 0
    store = LabelStore(run)
    item = store.next_item("ana")
    f = tmp_path / "labels.jsonl"
    f.write_text(json.dumps({"id": item.id, "choice": "tie"}) + "\n" + json.dumps({"id": item.id, **row}) + "\n")
    with pytest.raises(LabelError, match=rf'labels.jsonl:2: {said} is not 0, 1 or "tie"; nothing imported'):
        import_labels(store, f, "bo")
    f.write_text('"just text"\n')
    with pytest.raises(LabelError, match=r"labels.jsonl:1: not a JSON object; nothing imported"):
        import_labels(store, f, "bo")
    assert LabelStore(run).events == []


def test_a_label_cut_by_a_full_disk_does_not_block_the_file(tmp_path):
    """A label POST on a full disk left a partial line; the next label glued onto it and every label,
    `bpo label --summary` and `--resume` failed from then on with a JSON error naming no file."""
    over, run = human_run(tmp_path, **{"train.phases": 1, "train.steps": 2}), tmp_path / "run"
    assert runner.invoke(app, ["train", *over, "--no-eval"]).exit_code == 0
    store = LabelStore(run)
    first = store.next_item("ana")
    store.add("ana", first.id, 0)
    with open(store.path, "a") as f:
        f.write('{"seq": 1, "id": "0-')  # the cut write
    store = LabelStore(run)  # a reader drops the torn last line
    second = store.next_item("ana")
    store.add("ana", second.id, 1)
    again = LabelStore(run)
    assert [(e.id, e.choice) for e in again.events] == [(first.id, 0), (second.id, 1)]
    res = runner.invoke(app, ["label", str(run), "--summary"])
    assert res.exit_code == 0, res.output
