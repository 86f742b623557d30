"""``bpo eval``: one system's greedy responses against another's (the reference, the base model, an
adapter, or a file), judged by the task's scorer or a pairwise HTTP judge, with the win rate.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from bpo.annotators import build_annotator, build_gold, http_judge, judge_accuracy, judge_notes
from bpo.annotators.reward_model import independent_judges
from bpo.data import load_source
from bpo.eval.evaluation import fixed_scores, greedy, in_chunks
from bpo.eval.report import tie_warning
from bpo.io import tidy, write_json, write_jsonl
from bpo.progress import progress_bar
from bpo.registry import TASKS
from bpo.stats import outcomes_from_scores, summarize


def read_responses(path: str | Path, records) -> list[str]:
    """External responses to ``records``, in their order.

    Formats: ``.jsonl`` (one object per line: ``response`` or ``responses[0]``, and ``id``), ``.json``
    (a JSON array of such objects, or of strings), anything else one response per line. Rows that
    carry ids are matched to the prompts by id (an id that matches no prompt, a prompt with no row, or
    an id twice is refused, naming the first); rows without ids are matched by position and must be
    as many as the prompts. Some rows with ids and some without is refused.
    """
    from bpo.data import DataError, iter_rows

    path = Path(path)
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        rows = list(iter_rows(path))
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(
                f"{path}: a .json responses file must be one JSON array ({err}); JSON lines go in .jsonl"
            ) from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json responses file must be a JSON array, not a {type(data).__name__}")
        rows = [(i, {"response": x} if isinstance(x, str) else x) for i, x in enumerate(data, start=1)]
    else:
        return _aligned(
            path,
            [(i, line) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)],
            records,
            "line",
        )
    texts = []
    for where, row in rows:
        value = row.get("response", (row.get("responses") or [None])[0]) if isinstance(row, dict) else None
        if not isinstance(value, str):
            raise DataError(f"{path}:{where}: field 'response' (or 'responses') is missing or not a string")
        texts.append((where, row.get("id"), value))
    with_id = [t for t in texts if t[1] is not None]
    if not with_id:
        return _aligned(path, [(w, v) for w, _, v in texts], records, "row")
    if len(with_id) != len(texts):
        where = next(w for w, i, _ in texts if i is None)
        raise DataError(f"{path}:{where}: this row has no id while others have one; give every row an id or none")
    by_id: dict[str, str] = {}
    for where, rid, value in texts:
        rid = str(rid)
        if rid in by_id:
            raise DataError(f"{path}:{where}: id {rid!r} appears twice")
        by_id[rid] = value
    known = {r.id for r in records}
    unknown = [(w, str(i)) for w, i, _ in texts if str(i) not in known]
    if unknown:
        raise DataError(f"{path}:{unknown[0][0]}: id {unknown[0][1]!r} is not one of the {len(records)} eval prompts")
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise DataError(f"{path}: no response for prompt id {missing[0]!r} ({len(missing)} prompts have none)")
    return [by_id[r.id] for r in records]


def _responses(path, records, dropped: str) -> list[str]:
    """:func:`read_responses`, its error saying what the length filters dropped (the usual cause of a count
    that does not match)."""
    from bpo.data import DataError

    try:
        return read_responses(path, records)
    except DataError as err:
        raise DataError(f"{err}{dropped}") from None


def _aligned(path: Path, rows: list, records, unit: str) -> list[str]:
    from bpo.data import DataError

    if len(rows) != len(records):
        raise DataError(
            f"{path}: {len(rows)} responses for {len(records)} prompts; without ids they are matched by position, "
            f"one {unit} per prompt (or give each row the id of its prompt)"
        )
    return [v for _, v in rows]


def generate_greedy(cfg, records, adapter: str | None) -> list[str]:
    """Greedy responses of the base model, or of a saved PEFT adapter, to the eval prompts."""
    from peft import PeftModel

    from bpo.model.policy import load_policy

    policy = load_policy(cfg.model.name, cfg.device or None, cfg.model.dtype, cfg.model.chat_template)
    if adapter:
        policy.model = PeftModel.from_pretrained(policy.model, adapter).eval()
    return greedy(policy, records, cfg)


def check_eval_args(cfg, out: Path, adapter, responses, against: str, judge: str) -> None:
    """Everything about a ``bpo eval`` call that can be wrong, checked before a model is loaded."""
    from bpo.errors import ConfigError
    from bpo.model.policy import check_adapter

    if judge not in ("task", "http"):
        raise ConfigError(f"--judge {judge!r}: use task (the config's annotator as scorer) or http (a pairwise LLM)")
    if judge == "http":
        from bpo.annotators.llm_judge import check_judge

        check_judge(cfg, "--judge http")
    cfg.check_sources(("eval",), task_judge=judge == "task")
    if adapter and responses:
        raise ConfigError("give --adapter or --responses, not both")
    if responses and not Path(responses).exists():
        raise ConfigError(f"--responses {responses}: no such file")
    for folder in [adapter] + ([against] if against not in ("reference", "base") and Path(against).is_dir() else []):
        if folder:
            check_adapter(folder, cfg.model.name)
    if against not in ("reference", "base") and not Path(against).exists():
        raise ConfigError(f"--against {against!r}: not reference, base, an adapter folder or a responses file")
    if (out / "checkpoints").exists() or (out / "config.yaml").exists():
        raise ConfigError(
            f"--out {out} is a training run folder; bpo eval would replace its eval.json: use --out {out}/eval-NAME"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create it ({err.strerror})") from None


def run_eval(
    cfg,
    out: Path,
    adapter: str | None = None,
    responses: str | None = None,
    against: str = "reference",
    judge: str = "task",
) -> dict:
    """Win rate of one system over another on the config's eval prompts; writes eval.json and items.jsonl.

    ``against`` is ``reference`` (the human reference text, as in the paper), a PEFT adapter
    folder, ``base`` (the model without adapter) or a responses file. ``judge`` is ``task``
    (``eval.gold`` when set, else the config's annotator as a scorer: the quickstart judge, a reward
    model or a callable) or ``http`` (the pairwise LLM judge of the config's ``judge`` section).
    """
    check_eval_args(cfg, out, adapter, responses, against, judge)
    records, dropped = eval_records(cfg, against)
    checked = [] if judge == "http" else independent_judges(cfg, [r.prompt for r in records])  # before generating
    mine = _responses(responses, records, dropped) if responses else generate_greedy(cfg, records, adapter)
    if against == "reference":
        other = [r.reference for r in records]
    elif against == "base":
        other = generate_greedy(cfg, records, None)
    elif Path(against).is_dir():
        other = generate_greedy(cfg, records, against)
    else:
        other = _responses(against, records, dropped)
    if judge == "http":
        outcomes, scores, name, about = _judge_http(cfg, records, mine, other)
    else:
        outcomes, scores, name, about = _judge_task(cfg, records, mine, other, against == "reference")
    valid = [o for o in outcomes if o is not None]  # None: the judge's answer stayed unreadable
    result = summarize(valid, name, cfg.eval.bootstrap)
    result.update(invalid=len(outcomes) - len(valid), against=against, system=adapter or responses or "base")
    result.update(about)
    if checked:
        result["notes"] = checked + result.get("notes", [])
    result["warnings"] = tie_warning(result, f"vs {against}")
    result["config"] = cfg.to_dict()
    rows = []
    for i, r in enumerate(records):
        rows.append({"id": r.id, "response": mine[i], "against": other[i], "outcome": outcomes[i]})
        if scores:
            rows[-1].update(score=scores[0][i], against_score=scores[1][i])
    write_jsonl(out / "items.jsonl", rows)
    write_json(out / "eval.json", tidy(result))
    return result


def eval_records(cfg, against: str) -> tuple[list, str]:
    """The eval prompts (length-filtered in the policy's tokens when they come from a file) and what the
    filters dropped, said in the errors that follow."""
    from bpo.model.policy import load_policy

    needs_tokenizer = cfg.data.eval not in TASKS and (cfg.data.max_prompt_tokens or cfg.data.max_response_tokens)
    tokenizer = load_policy(cfg.model.name, "cpu").tokenizer if needs_tokenizer else None  # only for length filters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = load_source(cfg.data, "eval", cfg.data.eval_examples, tokenizer)
    for w in caught:  # said as usual
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    dropped = "".join(f"; {w.message}" for w in caught if "dropped" in str(w.message))
    if not records:
        raise ValueError(f"data.eval {cfg.data.eval!r} gave no prompts to evaluate on")
    if against == "reference":  # before any generation: a missing reference would waste it
        missing = [r.id for r in records if r.reference is None]
        if missing:
            raise ValueError(f"against=reference needs a reference for every prompt; {missing[0]} has none")
    return records, dropped


def _judge_http(cfg, records, mine, other) -> tuple[list, None, str, dict]:
    """The config's pairwise HTTP judge, both orders per prompt: outcomes, no scores."""
    j = http_judge(cfg)
    with progress_bar() as progress:
        task = progress.add_task(f"judge {j.name}: both orders", total=len(records))
        outcomes = []
        for r, a, b in zip(records, mine, other):
            outcomes.append(j.compare(r.prompt, a, b))
            progress.advance(task)
    return outcomes, None, j.name, {}


def _judge_task(cfg, records, mine, other, fixed: bool) -> tuple[list, tuple, str, dict]:
    """The judge a run's own evaluation uses (``eval.gold``, else the annotator): outcomes from scores, the
    scores, its name, and its notes and recorded accuracy. ``fixed``: the other texts never change (kept)."""
    annotator = build_gold(cfg) if cfg.eval.gold else build_annotator(cfg)
    about = {"notes": judge_notes(annotator), "judge_accuracy": judge_accuracy(annotator)}
    with progress_bar() as progress:
        task = progress.add_task(f"judge {annotator.name}: scoring", total=2 * len(records))
        done = lambda n: progress.advance(task, n)  # noqa: E731
        mine_scores = in_chunks(annotator, records, mine, done)
        if fixed:  # the same texts every time: their scores are kept
            other_scores = fixed_scores(annotator, records, other)
            done(len(records))
        else:
            other_scores = in_chunks(annotator, records, other, done)
    scores = (mine_scores, other_scores)
    return outcomes_from_scores(*scores), scores, annotator.name, {k: v for k, v in about.items() if v}
