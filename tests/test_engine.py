"""sampling.backend=openai against a stub of vLLM's/SGLang's API: the requests bpo sends (adapter loading,
sampling fields, seeds), the faults it retries or refuses, and the config checks. The real engine
(llama.cpp's server) is tested in test_engine_llamacpp.py."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from engine_stub import Stub
from safetensors.torch import load_file
from typer.testing import CliRunner

from bpo.cli import app
from bpo.config import load_config
from bpo.errors import ConfigError
from bpo.model.engine import EngineError, OpenAIBackend, token_ids
from bpo.model.ensemble import Ensemble
from bpo.model.policy import load_policy
from bpo.model.sampling import make_backend, row_key


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


def setup(tmp_path, stub, k=2, **over):
    policy = load_policy("tiny-random-llama", "cpu", "float32", "never")
    stub.eos = policy.tokenizer.eos_token_id
    settings = {
        "sampling.backend": "openai",
        "engine.url": stub.url,
        "engine.model": "base",
        "engine.share_dir": str(tmp_path / "share"),
        "engine.retries": 2,
        "engine.timeout": 1.0,
        "lora.r": 4,
        "sft.seeds": f"[{','.join(str(i) for i in range(k))}]",
        **over,
    }
    cfg = load_config(None, tiny_config(tmp_path, **settings))
    ens = Ensemble.create(policy.model, cfg.lora.peft(dropout=0.0), k, seed=0)
    with torch.no_grad():  # members that are not the base model
        for name, p in ens.peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ens.merge("behavior")
    return policy, ens, cfg


def prompts(n=3):
    return [[5 + i, 6, 7 + i] for i in range(n)]


def test_a_behavior_model_is_loaded_once_per_phase_through_vllms_adapter_endpoint(tmp_path, stub):
    policy, ens, cfg = setup(tmp_path, stub)
    backend = make_backend(policy, ens, cfg)
    assert make_backend(policy, ens, cfg) is backend  # one per model: the server keeps what it was given
    groups = backend.generate(prompts(), 2, cfg.sampling, "behavior", True, ["a", "b", "c"])
    backend.generate(prompts(2), 2, cfg.sampling, "behavior", True, ["d", "e"])  # same phase: no new load
    loads = [b for p, b in stub.requests if p == "/v1/load_lora_adapter"]
    assert len(loads) == 1 and not any(p.endswith("unload_lora_adapter") for p in stub.paths())
    folder = Path(loads[0]["lora_path"])
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 2 * 4  # the exact merge: rank K*r
    saved = load_file(str(folder / "adapter_model.safetensors"))
    ours = {n: p for n, p in ens.peft.named_parameters() if ".behavior." in n}
    assert len(saved) == len(ours)
    for name, p in ours.items():
        assert torch.equal(saved[name.replace(".behavior.", ".")], p.detach())
    asks = [b for p, b in stub.requests if p == "/v1/completions"]
    assert len(asks) == 3 * 2 + 2 * 2 and all(b["model"] == loads[0]["lora_name"] for b in asks)
    first = asks[0]
    assert first["n"] == 1 and first["max_tokens"] == cfg.sampling.max_new_tokens
    assert (first["temperature"], first["top_p"]) == (cfg.sampling.temperature, cfg.sampling.top_p)
    assert sorted(b["seed"] for b in asks[:6]) == sorted(row_key(k, j) for k in "abc" for j in range(2))
    assert {tuple(b["prompt"]) for b in asks[:6]} == {tuple(p) for p in prompts()}
    # every completion is the server's tokens, EOS kept when it stopped there; no reference log-probs taken
    assert all(c.logp is None and c.token_ids for g in groups for c in g)
    assert all(c.finished == (c.token_ids[-1] == stub.eos) for g in groups for c in g)
    # a refresh changes the behavior model: the old adapter is unloaded, the new one loaded
    with torch.no_grad():
        next(p for n, p in ens.peft.named_parameters() if "lora_B.member0" in n).add_(0.1)
    ens.merge("behavior")
    backend.generate(prompts(1), 2, cfg.sampling, "behavior", True, ["f"])
    tail = [p for p in stub.paths() if "lora" in p]
    assert tail == ["/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/load_lora_adapter"]
    assert stub.requests[-1][1]["model"] == stub.requests[-3][1]["lora_name"] != loads[0]["lora_name"]
    assert not folder.exists() and Path(stub.requests[-3][1]["lora_path"]).exists()  # the share dir keeps one
    # the base model needs nothing loaded
    backend.generate(prompts(1), 1, cfg.sampling, None)
    assert stub.requests[-1][1]["model"] == "base"


def test_sglang_adapter_endpoint_and_the_same_seed_for_the_same_sample(tmp_path, stub):
    policy, ens, cfg = setup(tmp_path, stub, **{"engine.adapter_api": "sglang"})
    backend = OpenAIBackend(policy, ens, cfg)
    one = backend.generate(prompts(3), 2, cfg.sampling, "behavior", False, ["a", "b", "c"])
    two = backend.generate(prompts(3)[1:], 2, cfg.sampling, "behavior", False, ["b", "c"])
    assert "/load_lora_adapter" in stub.paths()  # SGLang's, without /v1
    assert [[c.token_ids for c in g] for g in one[1:]] == [[c.token_ids for c in g] for g in two]


def test_the_hook_is_given_the_merged_weights(tmp_path, stub):
    seen = tmp_path / "seen.txt"
    hook = f"{sys.executable} -c \"import sys; open('{seen}', 'w').write(sys.argv[1])\" {{merged}}"
    policy, ens, cfg = setup(tmp_path, stub, **{"engine.weights": "hook", "engine.hook": hook})
    OpenAIBackend(policy, ens, cfg).generate(prompts(1), 2, cfg.sampling, "behavior")
    merged = load_file(str(Path(seen.read_text()) / "model.safetensors"))
    with ens.folded("behavior"), torch.no_grad():
        for name, p in ens.peft.get_base_model().named_parameters():
            if "lora_" not in name:
                assert torch.equal(merged[name.replace(".base_layer.", ".")], p), name
    assert "lora" not in " ".join(stub.paths())
    bad = load_config(None, tiny_config(tmp_path, **{**_settings(cfg), "engine.hook": "exit 3"}))
    with pytest.raises(EngineError, match=r"engine.hook exited 3"):
        OpenAIBackend(policy, ens, bad).generate(prompts(1), 2, cfg.sampling, "behavior")


def _settings(cfg):
    keys = ("sampling.backend", "engine.url", "engine.model", "engine.weights", "engine.share_dir", "lora.r")
    return {k: cfg.get(k) for k in keys}


@pytest.mark.parametrize(
    "faults,error",
    [
        (["json", "empty"], None),  # malformed or no choice: retried
        (["500", "500"], None),
        (["slow"], None),  # past engine.timeout: retried
        (["500", "500", "500"], r"failed after 3 tries \(last: HTTP 500"),
        (["400"], r"answered HTTP 400 .*prompt too long"),
        (["noids", "noids", "noids"], r"returned no token ids"),
    ],
)
def test_engine_faults_are_retried_or_refused_in_one_line(tmp_path, stub, faults, error):
    policy, ens, cfg = setup(tmp_path, stub, **{"engine.concurrency": 1})
    stub.faults = list(faults)
    backend = OpenAIBackend(policy, ens, cfg)
    if error is None:
        groups = backend.generate(prompts(1), 2, cfg.sampling, "behavior", keys=["a"])
        assert len(groups[0]) == 2 and all(c.token_ids for c in groups[0])  # all asked for, none short
    else:
        with pytest.raises(EngineError, match=error) as err:
            backend.generate(prompts(1), 2, cfg.sampling, "behavior", keys=["a"])
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "over,message",
    [
        ({}, "engine.url = '': must be the server's base URL"),
        ({"engine.url": "http://h:8000/v1"}, "engine.model = '': must be the name the server serves"),
        (
            {"engine.url": "http://h:8000/v1", "engine.model": "m", "lora.r": 16, "sft.seeds": "[0,1]"},
            "engine.max_lora_rank = 16: must be at least the behavior adapter's rank 32",
        ),
        ({"engine.url": "http://h/v1", "engine.model": "m", "engine.weights": "hook"}, "engine.hook = '': must be"),
    ],
)
def test_an_engine_that_cannot_take_the_weights_is_refused_at_start(tmp_path, over, message):
    res = CliRunner().invoke(app, ["config", "show", "sampling.backend=openai", *[f"{k}={v}" for k, v in over.items()]])
    assert res.exit_code == 2 and res.output.startswith("error: ") and message in res.output, res.output
    ok = {"engine.url": "http://h:8000/v1", "engine.model": "m", "lora.r": 16, "sft.seeds": "[0,1]"}
    for fine in ({"train.merge": "linear"}, {"engine.max_lora_rank": 32}):  # what the message offers works
        load_config(None, [f"{k}={v}" for k, v in {**ok, **fine, "sampling.backend": "openai"}.items()])


def test_llamacpp_without_a_built_engine_says_how_to_build_it(tmp_path):
    with pytest.raises(ConfigError, match=r"engine.dir: no llama-server .* `bash scripts/engine.sh`"):
        load_config(None, ["sampling.backend=llamacpp", f"engine.dir={tmp_path}"])


def test_token_ids_in_each_servers_form():
    def answer(**choice):
        return {"choices": [{"finish_reason": "length", **choice}]}

    assert token_ids(answer(token_ids=[3, 4], logprobs=None))[:2] == ([3, 4], None)
    content = {"content": [{"id": 3, "logprob": -1.5}, {"id": 9, "logprob": -0.25}]}
    llama = {**answer(logprobs=content), "__verbose": {"tokens": [3, 9]}}
    assert token_ids(llama)[:2] == ([3, 9], [-1.5, -0.25])
    # llama.cpp leaves a token that ends inside a UTF-8 character out of its log-probs: ids from tokens, no logps
    assert token_ids({**llama, "__verbose": {"tokens": [3, 5, 9]}})[:2] == ([3, 5, 9], None)
    legacy = {"tokens": ["token_id:7", "token_id:8"], "token_logprobs": [-1.0, -2.0]}
    assert token_ids(answer(logprobs=legacy))[:2] == ([7, 8], [-1.0, -2.0])
    with pytest.raises(KeyError):
        token_ids(answer(text="hi", logprobs=content))  # no ids but the log-probs': not trusted
