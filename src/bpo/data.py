"""Prompt and preference records, and loaders for the formats the paper and TRL users have.

A bad row is a :class:`DataError` that names the file, the line (1-based, or the CSV row)
and the field. With ``skip_bad=True`` bad rows are dropped and counted in one warning.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpo.config import DataConfig
from bpo.errors import BpoError
from bpo.registry import TASKS

if TYPE_CHECKING:  # only named in signatures: reading a config never imports transformers
    from transformers import PreTrainedTokenizerBase


class DataError(BpoError, ValueError):
    """A record could not be read; the message names file, row and field."""


@dataclass(frozen=True)
class PromptRecord:
    """What online training and evaluation need: a prompt, and a human reference when known."""

    id: str
    prompt: str
    reference: str | None = None


@dataclass(frozen=True)
class PreferenceRecord:
    """A judged pair, for offline training from a fixed dataset or for judge checks."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    group: str = ""  # where the chosen response came from, when the file says (TL;DR: policy or reference)


# Known Hub datasets: (split names mapped by the caller) -> field names.
HUB_FIELDS: dict[str, dict[str, str]] = {
    "CarperAI/openai_summarize_tldr": {"prompt": "prompt", "reference": "label"},
    "HuggingFaceH4/helpful-anthropic-raw": {"prompt": "instruction", "reference": "demonstration"},
    "HuggingFaceH4/hh-rlhf-h4": {"chosen": "chosen", "rejected": "rejected"},
    "Anthropic/hh-rlhf": {"chosen": "chosen", "rejected": "rejected"},
}

ASSISTANT = "\n\nAssistant:"


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def iter_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, record) for jsonl[.gz] and csv[.gz] files."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    name = path.name.removesuffix(".gz")
    try:
        yield from _rows(path, name)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); convert it to UTF-8") from None
    except (OSError, EOFError) as err:  # a damaged .gz
        raise DataError(f"{path}: cannot be read ({type(err).__name__}: {err})") from None


def _rows(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as f:
        if name.endswith(".csv"):
            reader = csv.DictReader(f)
            for i, row in enumerate(reader, start=2):  # row 1 is the header
                yield i, row
        elif name.endswith((".jsonl", ".json")):
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{i}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
                yield i, row
        else:
            raise DataError(f"{path}: unknown format; use .jsonl, .csv (optionally .gz)")


def _field(
    path: Path | str, line: int, row: dict[str, Any], field: str, required: bool = True, allow_empty: bool = False
) -> str | None:
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip() and not allow_empty):
        if required:
            problem = "missing" if field not in row else "empty"
            raise DataError(f"{path}:{line}: field {field!r} is {problem}")
        return None
    if not isinstance(value, str):
        raise DataError(f"{path}:{line}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _collect(path: Path, rows: Iterable[tuple[int, Any]], make: Callable[[int, Any], Any], skip_bad: bool) -> list:
    out, bad, first = [], 0, ""
    for line, row in rows:
        try:
            out.append(make(line, row))
        except DataError as err:
            if not skip_bad:
                raise
            bad += 1
            first = first or str(err)
    if bad:
        warnings.warn(f"{path}: skipped {bad} bad rows (first: {first})", stacklevel=3)
    return out


def load_prompts(
    path: str | Path,
    prompt_field: str = "prompt",
    reference_field: str | None = "label",
    id_field: str | None = None,
    skip_bad: bool = False,
) -> list[PromptRecord]:
    """Prompt records from jsonl/csv: the paper's split files (``prompt``/``label``) by default.

    When ``reference_field`` is given but absent from every row, records have no reference;
    when it is present in some rows, a row without it is a bad row.
    """
    path = Path(path)
    rows = list(iter_rows(path))
    has_ref = reference_field is not None and any(reference_field in r for _, r in rows)

    def make(line: int, row: dict[str, Any]) -> PromptRecord:
        rid = str(row[id_field]) if id_field and id_field in row else f"{path.stem}-{line}"
        # an empty reference is real data (HH has empty chosen replies); a missing one is not
        ref = _field(path, line, row, reference_field, allow_empty=True) if has_ref else None
        return PromptRecord(rid, _field(path, line, row, prompt_field), ref)

    return _collect(path, rows, make, skip_bad)


def load_preferences(
    path: str | Path,
    prompt_field: str | None = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    skip_bad: bool = False,
) -> list[PreferenceRecord]:
    """Preference pairs: TRL's ``prompt``/``chosen``/``rejected``, or HH-RLHF full dialogues.

    When the rows have no prompt field (HH-RLHF), the prompt is the dialogue up to and
    including the last ``Assistant:`` turn marker, which must be the same in both texts.
    """
    path = Path(path)
    rows = list(iter_rows(path))
    explicit = prompt_field is not None and any(prompt_field in r for _, r in rows)

    def make(line: int, row: dict[str, Any]) -> PreferenceRecord:
        chosen = _field(path, line, row, chosen_field)
        rejected = _field(path, line, row, rejected_field)
        if explicit:
            prompt = _field(path, line, row, prompt_field)
        else:
            prompt, chosen, rejected = split_dialogue(chosen, rejected, f"{path}:{line}", chosen_field)
        return PreferenceRecord(f"{path.stem.removesuffix('.jsonl')}-{line}", prompt, chosen, rejected)

    return _collect(path, rows, make, skip_bad)


def split_dialogue(chosen: str, rejected: str, where: str, field: str = "chosen") -> tuple[str, str, str]:
    """Split HH-RLHF dialogues into the shared prompt and the two replies.

    The prompt is the longest shared prefix that ends in an ``Assistant:`` marker. In most rows
    that is everything before the last assistant turn; in some HH rows the two dialogues already
    differ in an earlier human turn, and the replies then carry the turns that differ (as TRL's
    prompt extraction does).
    """
    if ASSISTANT not in chosen:
        raise DataError(f"{where}: field {field!r} has no {ASSISTANT.strip()!r} turn")
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    cut = chosen.rfind(ASSISTANT, 0, shared)
    if cut < 0 or cut + len(ASSISTANT) > shared:
        raise DataError(f"{where}: chosen and rejected share no dialogue up to an Assistant turn")
    prompt = chosen[: cut + len(ASSISTANT)]
    return prompt, chosen[len(prompt) :].strip(), rejected[len(prompt) :].strip()


def load_tldr_judged(path: str | Path, skip_bad: bool = False) -> list[PromptRecord]:
    """The OpenAI TL;DR judged CSV: ``query`` is the prompt, ``reference_responses`` the human summary."""
    return load_prompts(path, prompt_field="query", reference_field="reference_responses", skip_bad=skip_bad)


def load_pairs(path: str | Path, skip_bad: bool = False) -> list[PreferenceRecord]:
    """Human pairs from any format bpo reads: TRL ``prompt``/``chosen``/``rejected``, HH-RLHF dialogues,
    or the TL;DR judged CSV (``preferred`` names the better of ``postprocessed_response`` and
    ``reference_responses``; unjudged rows, an empty ``preferred``, are not pairs and are left out).
    """
    path = Path(path)
    rows = iter_rows(path)
    first = next(rows, None)
    if first is None or "preferred" not in first[1]:
        return load_preferences(path, skip_bad=skip_bad)

    def make(line: int, row: dict[str, Any]) -> PreferenceRecord | None:
        pick = (row.get("preferred") or "").strip()
        if not pick:
            return None
        if pick not in ("ours", "reference"):
            raise DataError(f"{path}:{line}: field 'preferred' is {pick!r}; expected 'ours', 'reference' or empty")
        ours = _field(path, line, row, "postprocessed_response")
        ref = _field(path, line, row, "reference_responses")
        chosen, rejected = (ref, ours) if pick == "reference" else (ours, ref)
        source = "reference" if pick == "reference" else "policy"
        return PreferenceRecord(f"{path.stem}-{line}", _field(path, line, row, "query"), chosen, rejected, source)

    return [r for r in _collect(path, [first, *rows], make, skip_bad) if r is not None]


def plain_dialogue(text: str) -> str:
    """HH-RLHF turns (``\n\nHuman: ...\n\nAssistant: ...``) in the paper's split format (``user: ... assistant: ``).

    The BPO splits of hh-rlhf-h4 write each turn as ``role: content `` on one line; a reward model
    trained on HH-RLHF pairs must see the policy's prompts in the same form it was trained on.
    """
    parts = re.split(r"\n\n(Human|Assistant):", text)
    out = parts[0].strip()
    for role, content in zip(parts[1::2], parts[2::2]):
        name = "user" if role == "Human" else "assistant"
        out += f"{name}: {content.strip()} " if content.strip() else f"{name}: "
    return out


def load_hub(
    name: str,
    split: str,
    prompt_field: str | None = None,
    reference_field: str | None = None,
) -> list[PromptRecord]:
    """Prompt records from a Hub dataset (needs network or a populated HF cache).

    Pair datasets (HH-RLHF style) give the dialogue prefix as prompt and the chosen reply as reference.
    """
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # datasets raises many types for "not reachable"
        raise DataError(
            f"cannot load Hub dataset {name!r} split {split!r}: {err}. Offline, download it elsewhere "
            "and pass the jsonl/csv file instead."
        ) from err
    fields = HUB_FIELDS.get(name, {})
    records = []
    for i, row in enumerate(ds):
        where = f"{name}[{split}]:{i}"
        if "chosen" in fields and prompt_field is None:
            chosen, rejected = row[fields["chosen"]], row[fields["rejected"]]
            if isinstance(chosen, list):  # message lists: flatten to the HH text format
                chosen, rejected = _messages_to_text(chosen), _messages_to_text(rejected)
            prompt, reply, _ = split_dialogue(chosen, rejected, where)
            records.append(PromptRecord(f"{name}-{split}-{i}", prompt, reply))
            continue
        pf = prompt_field or fields.get("prompt", "prompt")
        rf = reference_field or fields.get("reference")
        prompt = _field(where, 0, row, pf)
        records.append(PromptRecord(f"{name}-{split}-{i}", prompt, _field(where, 0, row, rf, False) if rf else None))
    return records


def _messages_to_text(messages: list[dict[str, str]]) -> str:
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def filter_by_length(
    records: list[PromptRecord],
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
) -> list[PromptRecord]:
    """Drop records whose prompt (or reference) is longer than the limits allow, and say how many, which
    first and what keeps them (a warning: a silent drop would leave a user counting prompts)."""
    kept, dropped = [], {"prompt": [], "reference": []}
    for r in records:
        if max_prompt_tokens and len(tokenizer(r.prompt).input_ids) > max_prompt_tokens:
            dropped["prompt"].append(r.id)
        elif max_response_tokens and r.reference and len(tokenizer(r.reference).input_ids) > max_response_tokens:
            dropped["reference"].append(r.id)
        else:
            kept.append(r)
    for what, ids in dropped.items():
        if ids:
            key, limit = (
                ("max_prompt_tokens", max_prompt_tokens)
                if what == "prompt"
                else ("max_response_tokens", max_response_tokens)
            )
            warnings.warn(
                f"dropped {len(ids)} of {len(records)} records whose {what} is over data.{key}={limit} tokens "
                f"(first: {ids[0]}); a larger data.{key} keeps them (empty: no limit)",
                stacklevel=2,
            )
    return kept


def load_source(cfg: DataConfig, role: str, n: int, tokenizer: PreTrainedTokenizerBase | None) -> list[PromptRecord]:
    """Up to ``n`` records for ``role`` (train, sft or eval) from the source the config names.

    A registered task (:mod:`bpo.tasks`; ``quickstart``: the embedded task's posts) makes them;
    files and Hub datasets are length-filtered as in the paper, then train and SFT prompts are
    shuffled with the seed.
    """
    spec = getattr(cfg, role)
    if spec in TASKS:
        return TASKS.get(spec).prompts(cfg, role, n)
    if spec.startswith("hub:"):
        _, name, split = (spec.split(":", 2) + [""])[:3]
        if not split:
            raise DataError(f"data.{role} {spec!r}: use hub:NAME:SPLIT")
        records = load_hub(name, split)
    else:
        records = load_prompts(spec, cfg.prompt_field, cfg.reference_field, skip_bad=cfg.skip_bad_rows)
    records = filter_by_length(records, tokenizer, cfg.max_prompt_tokens, cfg.max_response_tokens)
    if role != "eval":
        records = shuffled(records, cfg.seed)
    return records[:n]


def shuffled(records: list, seed: int) -> list:
    """A seeded permutation; the same seed always gives the same order on every machine."""
    out = list(records)
    random.Random(seed).shuffle(out)
    return out
