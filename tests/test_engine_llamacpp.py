"""The real engine: llama.cpp's llama-server as scripts/engine.sh builds it (CI builds it; elsewhere these
tests are skipped until `bash scripts/engine.sh` has run). A tiny random Llama with SmolLM2's tokenizer
stands in for a model (the converter knows that tokenizer)."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from bpo.config import load_config
from bpo.errors import ConfigError
from bpo.model.engine import OpenAIBackend
from bpo.model.llamacpp import LlamaCppBackend
from bpo.model.llamacpp_dir import engine_dir
from bpo.model.policy import load_policy, tiny_llama_config

try:
    ENGINE = engine_dir()
except ConfigError as err:
    if os.environ.get("CI"):  # CI builds it (.ci/run): a missing engine there is a failure, not a skip
        raise
    pytestmark = pytest.mark.skip(reason=str(err))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaForCausalLM

    tokenizer = load_policy("smollm2-135m-instruct", "cpu", "float32").tokenizer
    folder = tmp_path_factory.mktemp("tiny-smol")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cfg_for(tmp_path, model_dir, **over):
    settings = {"model.name": str(model_dir), "model.chat_template": "never", "sampling.backend": "llamacpp"}
    settings |= {"engine.concurrency": 4, "sampling.max_new_tokens": 16, **over}
    return load_config(None, tiny_config(tmp_path, **settings))


def servers_of(folder: Path) -> list[str]:
    """Processes whose command line names ``folder`` (the backend's GGUF lives there)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder) in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:  # gone meanwhile
            pass
    return found


def teacher_forced(policy, prompt, tokens):
    with torch.no_grad():
        logits = policy.model(torch.tensor([prompt + tokens])).logits[0].float()
    return torch.log_softmax(logits, -1)[len(prompt) - 1 : -1].gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def test_the_engine_samples_the_model_and_agrees_with_teacher_forcing(tmp_path, model_dir):
    # top-k 3: llama.cpp's rounding depends on how requests are batched (~1e-5 here), so on this random
    # model's near-uniform 49k-token distribution a draw near a boundary flips in about half the runs
    # (seen); with 3 candidates a key's draws decide its tokens in any batch (the log-probs are pre-top-k)
    cfg = cfg_for(tmp_path, model_dir, **{"sampling.top_k": 3})
    policy = load_policy(cfg.model.name, "cpu", "float32", "never")
    backend = LlamaCppBackend(policy, None, cfg)
    try:
        prompts = [[100 + i, 200, 300 + i, 400] for i in range(4)]
        groups = backend.generate(prompts, 2, cfg.sampling, None, True, ["a", "b", "c", "d"])
        worst, checked = 0.0, 0
        for prompt, group in zip(prompts, groups):
            for c in group:
                assert c.logp is None and c.token_ids  # the reference is teacher-forced, never the engine's
                if c.engine_logps is None:  # llama.cpp gave log-probs for fewer tokens (a split UTF-8 character)
                    continue
                gap = (teacher_forced(policy, prompt, c.token_ids) - torch.tensor(c.engine_logps)).abs().max()
                worst, checked = max(worst, float(gap)), checked + 1
        assert checked >= 4, checked
        # fp32 end to end: ~1e-5 nats here; llama.cpp's defaults (f16 KV cache, flash attention) give 1e-4 on this
        # tiny model and 1e-2 on SmolLM2 (docs/benchmarks/engine.md)
        assert worst < 5e-5, worst
        # the same key gives the same samples in another batch, and through the plain openai client too
        again = backend.generate(prompts[2:], 2, cfg.sampling, None, False, ["c", "d"])
        assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in groups[2:]]
        plain = load_config(None, tiny_config(tmp_path, **{"engine.url": backend.url, "engine.model": "bpo"}))
        client = OpenAIBackend(policy, None, plain)
        via = client.generate(prompts[:2], 2, cfg.sampling, None, False, ["a", "b"])
        assert [[c.token_ids for c in g] for g in via] == [[c.token_ids for c in g] for g in groups[:2]]
        # a server that dies mid-phase is started again and the request asked again
        backend.proc.kill()
        backend.proc.wait()
        after = backend.generate(prompts[:1], 2, cfg.sampling, None, False, ["a"])
        assert [c.token_ids for c in after[0]] == [c.token_ids for c in groups[0]]
    finally:
        backend.close()
    assert not servers_of(backend.work), "a llama-server outlived its backend"


@pytest.mark.slow
def test_a_run_samples_through_the_engine_with_an_exact_reference(tmp_path, model_dir):
    from bpo.train.loop import train

    cfg = cfg_for(tmp_path, model_dir, **{"train.steps": 2, "train.phases": 2, "train.batch_size": 2})
    train(cfg, evaluate=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "annotations.jsonl").read_text().splitlines()[1:]]
    assert len(rows) == 4 and all(r["behavior_logps"] in (None, [None, None]) for r in rows)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    # each step opens a phase: policy = behavior = reference, so the DPO loss is log 2 exactly
    assert len(steps) == 2 and all(abs(m["loss"] - math.log(2)) < 1e-5 for m in steps), steps


SERVE_AND_WAIT = """
import sys, time
from bpo.config import load_config
from bpo.model.llamacpp import LlamaCppBackend
from bpo.model.policy import load_policy
cfg = load_config(None, sys.argv[1:])
backend = LlamaCppBackend(load_policy(cfg.model.name, "cpu", "float32", "never"), None, cfg)
backend.serve(None)
print(backend.work, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_run_leaves_no_server_behind(tmp_path, model_dir):
    import signal
    import subprocess
    import sys
    import time

    over = tiny_config(tmp_path, **{"model.name": str(model_dir), "model.chat_template": "never"})
    over += ["sampling.backend=llamacpp", "engine.concurrency=1"]
    child = subprocess.Popen([sys.executable, "-c", SERVE_AND_WAIT, *over], stdout=subprocess.PIPE, text=True)
    work = Path(child.stdout.readline().strip())
    try:
        assert work.name.startswith("bpo-llamacpp-") and servers_of(work), "the server did not start"
        child.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel closes the child's files
        child.wait()
        deadline = time.monotonic() + 15
        while servers_of(work) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not servers_of(work), "llama-server outlived the run that started it"
    finally:
        for pid in servers_of(work):
            os.kill(int(pid), signal.SIGKILL)
