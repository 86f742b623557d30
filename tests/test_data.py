import gzip
import json

import pytest

from bpo.data import (
    DataError,
    PromptRecord,
    filter_by_length,
    load_hub,
    load_preferences,
    load_prompts,
    load_tldr_judged,
    shuffled,
)


def test_paper_splits(shared_data):
    tldr = load_prompts(shared_data / "bpo-splits/tldr/test.jsonl")
    assert len(tldr) == 1000
    assert tldr[0].prompt.rstrip().endswith("TL;DR:") and tldr[0].reference
    assert len({r.id for r in tldr}) == 1000
    sampling = load_prompts(shared_data / "bpo-splits/hh-helpful/sampling.jsonl")
    assert len(sampling) == 10000 and sampling[0].prompt.endswith("Assistant: ")
    harmless = load_prompts(shared_data / "bpo-splits/hh-harmless/test.jsonl")
    assert len(harmless) == 500 and all(r.reference is not None for r in harmless)
    assert sum(r.reference == "" for r in harmless) >= 1  # line 317: an empty chosen reply, kept


def test_hh_rlhf_pairs(shared_data):
    pairs = load_preferences(shared_data / "hh-rlhf/harmless-base-test.jsonl.gz")
    assert len(pairs) == 2312
    p = pairs[0]
    assert p.prompt.startswith("\n\nHuman:") and p.prompt.endswith("\n\nAssistant:")
    assert "\n\nAssistant:" not in p.chosen and p.chosen and p.rejected
    # most rows differ only in the last reply; the rest keep their differing turns in the replies
    last_turn_only = sum("\n\nAssistant:" not in q.chosen + q.rejected for q in pairs)
    assert 2000 < last_turn_only < 2312


def test_tldr_judged_csv(shared_data):
    rows = load_tldr_judged(shared_data / "tldr-judged/oai1b_judged.csv")
    assert len(rows) == 1945
    assert rows[0].prompt.startswith("SUBREDDIT:") and rows[0].reference


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_trl_style_jsonl(tmp_path):
    f = write(tmp_path / "p.jsonl", [json.dumps({"prompt": "Q?", "chosen": "yes", "rejected": "no"})])
    (rec,) = load_preferences(f)
    assert (rec.prompt, rec.chosen, rec.rejected) == ("Q?", "yes", "no")


def test_generic_fields_and_csv(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("question,answer,uid\nhello,world,a1\nbye,moon,a2\n")
    recs = load_prompts(f, prompt_field="question", reference_field="answer", id_field="uid")
    assert recs == [PromptRecord("a1", "hello", "world"), PromptRecord("a2", "bye", "moon")]
    g = write(tmp_path / "noref.jsonl", [json.dumps({"prompt": "only"})])
    assert load_prompts(g)[0].reference is None


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"prompt": "a", "label": "b"}', '{"label": "b"}'], r"bad\.jsonl:2: field 'prompt' is missing"),
        (['{"prompt": "a", "label": "b"}', '{"prompt": "", "label": "b"}'], r"bad\.jsonl:2: field 'prompt' is empty"),
        (['{"prompt": 3, "label": "b"}'], r"bad\.jsonl:1: field 'prompt' must be a string, got int"),
        (['{"prompt": "a", "label": "b"}', "{not json"], r"bad\.jsonl:2: not valid JSON"),
        (['["a", "b"]'], r"bad\.jsonl:1: expected a JSON object, got list"),
        (['{"prompt": "a", "label": "b"}', '{"prompt": "c"}'], r"bad\.jsonl:2: field 'label' is missing"),
    ],
)
def test_bad_prompt_rows_name_file_line_field(tmp_path, lines, match):
    with pytest.raises(DataError, match=match):
        load_prompts(write(tmp_path / "bad.jsonl", lines))


def test_bad_rows_can_be_skipped_with_a_count(tmp_path):
    f = write(
        tmp_path / "bad.jsonl", ['{"prompt": "a", "label": "b"}', '{"label": "b"}', '{"prompt": 1, "label": "x"}']
    )
    with pytest.warns(UserWarning, match=r"skipped 2 bad rows \(first: .*bad\.jsonl:2: field 'prompt'"):
        assert len(load_prompts(f, skip_bad=True)) == 1


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DataError, match="unknown format"):
        load_prompts(tmp_path / "x.parquet")


def test_bad_hh_pairs(tmp_path):
    f = tmp_path / "hh.jsonl.gz"
    rows = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
        {"chosen": "no turn markers", "rejected": "x"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: DIFFERENT\n\nAssistant: c"},
        {"chosen": "\n\nHuman: a\n\nAssistant: b"},
    ]
    with gzip.open(f, "wt") as out:
        out.write("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"hh\.jsonl\.gz:2: field 'chosen' has no 'Assistant:' turn"):
        load_preferences(f)
    with pytest.warns(UserWarning, match="skipped 3 bad rows"):
        (ok,) = load_preferences(f, skip_bad=True)
    assert (ok.prompt, ok.chosen, ok.rejected) == ("\n\nHuman: hi\n\nAssistant:", "hello", "go away")
    with gzip.open(f, "wt") as out:
        out.write("\n".join(json.dumps(r) for r in [rows[0], rows[2]]))
    with pytest.raises(DataError, match=r":2: chosen and rejected share no dialogue up to an Assistant turn"):
        load_preferences(f)
    with gzip.open(f, "wt") as out:
        out.write("\n".join(json.dumps(r) for r in [rows[0], rows[3]]))
    with pytest.raises(DataError, match=r":2: field 'rejected' is missing"):
        load_preferences(f)


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="cannot load Hub dataset 'CarperAI/openai_summarize_tldr'.*jsonl/csv"):
        load_hub("CarperAI/openai_summarize_tldr", "test")


def test_length_filter_and_seeded_shuffle(tiny):
    recs = [PromptRecord(str(i), "x" * (i + 1), "y" * (10 - i)) for i in range(10)]
    kept = filter_by_length(recs, tiny.tokenizer, max_prompt_tokens=5, max_response_tokens=7)
    assert [r.id for r in kept] == ["3", "4"]  # byte tokenizer: one token per character
    a, b = shuffled(recs, 3), shuffled(recs, 3)
    assert a == b and a != recs and sorted(a, key=lambda r: int(r.id)) == recs


def test_an_overlong_prompt_is_dropped_by_default_and_said(tmp_path):
    """A 250k-token prompt ran over 300 s with no output: there was no default length limit."""
    from bpo.config import load_config
    from bpo.data import load_source
    from bpo.model.policy import byte_tokenizer

    f = tmp_path / "p.jsonl"
    rows = [{"id": "short", "prompt": "hello?", "label": "hi"}, {"id": "huge", "prompt": "x" * 5000, "label": "y"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"data.eval={f}"])
    assert cfg.data.max_prompt_tokens == 1024
    with pytest.warns(UserWarning, match=r"dropped 1 of 2 records whose prompt is over data.max_prompt_tokens=1024 "
                                         r"tokens \(first: p-2\)"):  # fmt: skip
        kept = load_source(cfg.data, "eval", 10, byte_tokenizer())
    assert [r.prompt for r in kept] == ["hello?"]
    cfg = load_config(None, [f"data.eval={f}", "data.max_prompt_tokens="])  # empty: no limit
    assert cfg.data.max_prompt_tokens is None and len(load_source(cfg.data, "eval", 10, byte_tokenizer())) == 2


def test_binary_data_is_one_error_naming_the_file(tmp_path):
    from bpo.data import DataError, load_prompts

    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"prompt": "ok"}\n\xff\xfe\x00\x01garbage\n')
    with pytest.raises(DataError, match=r"p\.jsonl: not UTF-8 text"):
        load_prompts(f)
