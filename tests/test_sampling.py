import torch
from peft import LoraConfig

from bpo.config import SamplingConfig
from bpo.model.ensemble import Ensemble
from bpo.model.logprobs import build_batch, sequence_logps
from bpo.model.sampling import Completion, HFBackend, identical


def test_sampling_shapes_eos_and_own_logps(tiny):
    eos = tiny.tokenizer.eos_token_id
    head = tiny.model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():  # an EOS bias: about 1 step in 12 ends a sample, so samples reach EOS within 24 tokens
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[eos] = 3.1
    tiny.model.lm_head = biased
    gen = torch.Generator().manual_seed(0)
    ens = Ensemble.create(tiny.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), 1)
    with torch.no_grad():
        for p in ens.member_parameters("member0"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)  # seeded: the test does not depend on test order
    ens.merge("behavior")
    prompts = [tiny.encode_prompt(t) for t in ["hello there", "a much longer prompt than the first", "x"]]
    params = SamplingConfig(max_new_tokens=24, batch_size=2)
    torch.manual_seed(0)
    groups = HFBackend(tiny, ens).generate(prompts, 3, params, adapter="behavior", return_logps=True)
    assert [len(g) for g in groups] == [3, 3, 3]
    flat = [c for g in groups for c in g]
    for c in flat:
        assert 1 <= len(c.token_ids) <= 24
        assert c.finished == (c.token_ids[-1] == eos) and eos not in c.token_ids[:-1]
        assert c.finished or len(c.token_ids) == 24  # a sample stops at EOS or at the token limit, nowhere else
        assert len(c.token_logps) == len(c.token_ids)
    assert sum(c.finished for c in flat) >= 3  # EOS is reached, and the log-prob of the EOS token is counted
    # the sampler's own log-probs are the behavior model's teacher-forced log-probs
    batch = build_batch(
        [p for p in prompts for _ in range(3)], [c.token_ids for c in flat], tiny.tokenizer.pad_token_id
    )
    want = ens.logps("behavior", batch)[0]
    torch.testing.assert_close(torch.tensor([c.logp for c in flat], dtype=want.dtype), want, atol=1e-4, rtol=0)
    # and not the base model's
    base = ens.logps(None, batch)[0]
    assert (base - want).abs().max() > 1e-2


def test_greedy_is_deterministic_and_flags_identical(tiny):
    prompts = [tiny.encode_prompt("same prompt")]
    params = SamplingConfig(max_new_tokens=8, temperature=0.0)
    (group,) = HFBackend(tiny).generate(prompts, 2, params, adapter=None)
    assert identical(group)
    assert not identical([Completion([1, 2], "a", False), Completion([1, 3], "b", False)])


def test_plain_model_logps_match(tiny):
    prompts = [tiny.encode_prompt("abc"), tiny.encode_prompt("defgh")]
    torch.manual_seed(3)
    groups = HFBackend(tiny).generate(prompts, 2, SamplingConfig(max_new_tokens=10), None, return_logps=True)
    flat = [c for g in groups for c in g]
    batch = build_batch(
        [p for p in prompts for _ in range(2)], [c.token_ids for c in flat], tiny.tokenizer.pad_token_id
    )
    with torch.no_grad():
        want = sequence_logps(tiny.model, batch)[0]
    torch.testing.assert_close(torch.tensor([c.logp for c in flat], dtype=want.dtype), want, atol=1e-4, rtol=0)


def test_keyed_sampling_does_not_depend_on_the_batch(tiny):
    texts = ["first prompt", "second, longer prompt here", "third"]
    prompts = [tiny.encode_prompt(t) for t in texts]
    backend = HFBackend(tiny)
    params = SamplingConfig(max_new_tokens=12, batch_size=3)
    together = backend.generate(prompts, 2, params, None, keys=["a", "b", "c"])
    alone = backend.generate(prompts[1:2], 2, params, None, keys=["b"])
    assert [c.token_ids for c in together[1]] == [c.token_ids for c in alone[0]]
    other_key = backend.generate(prompts[1:2], 2, params, None, keys=["z"])
    assert [c.token_ids for c in other_key[0]] != [c.token_ids for c in alone[0]]
    # the two samples of one prompt differ (distinct noise per sample index)
    assert together[0][0].token_ids != together[0][1].token_ids


def test_keyed_gumbel_samples_the_softmax():
    from bpo.model.sampling import _KeyedGumbel

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 1e-9]]))
    for top_k in (0, 3):  # all tokens get noise, or only the top 3 (the 4th is ~impossible anyway)
        proc = _KeyedGumbel(torch.arange(4000), prompt_width=0, top_k=top_k)
        out = proc(torch.zeros((4000, 0), dtype=torch.long), logits.expand(4000, 4).clone())
        assert torch.isinf(out).sum(-1).eq(3).all()  # one token left per row: HF's greedy step takes it
        freq = torch.bincount(out.argmax(-1), minlength=4) / 4000
        torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.03, rtol=0)


def test_keyed_sampling_with_temperature_and_top_p_samples_the_warped_softmax():
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from bpo.model.sampling import _KeyedGumbel

    logits = torch.log(torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]))
    temperature, top_p = 0.7, 0.8
    probs = torch.softmax(logits[0] / temperature, -1)
    keep = torch.cumsum(probs, 0) - probs < top_p  # the nucleus: smallest prefix with mass >= top_p
    want = torch.where(keep, probs, 0.0) / probs[keep].sum()
    n = 20000
    scores = logits.expand(n, 5).clone()
    ids = torch.zeros((n, 0), dtype=torch.long)
    for warp in (TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p), _KeyedGumbel(torch.arange(n), 0)):
        scores = warp(ids, scores)
    freq = torch.bincount(scores.argmax(-1), minlength=5) / n
    assert keep.tolist() == [True, True, True, False, False]  # the test exercises a cut
    torch.testing.assert_close(freq, want, atol=0.015, rtol=0)
    chi2 = (((freq - want) ** 2 / want.clamp(min=1e-9))[keep] * n).sum()
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_folded_adapter_and_shared_prefill_sample_the_same_model(tiny):
    # folding the frozen behavior adapter into the base weights and prefilling each prompt once are
    # speed-ups only: same samples, same log-probs, and the base weights come back bit for bit
    gen = torch.Generator().manual_seed(1)
    ens = Ensemble.create(tiny.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), 2)
    with torch.no_grad():
        for m in ens.members:
            for p in ens.member_parameters(m):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    ens.merge("behavior")
    base = {n: p.detach().clone() for n, p in tiny.model.named_parameters() if "lora" not in n}
    prompts = [tiny.encode_prompt(t) for t in ["hello there", "a much longer prompt than the first one", "xy"]]
    keys = ["a", "b", "c"]

    def sample(fold: bool, prefill: bool) -> list[Completion]:
        params = SamplingConfig(max_new_tokens=16, batch_size=3, fold_adapter=fold, prefill_once=prefill)
        return [c for g in HFBackend(tiny, ens).generate(prompts, 3, params, "behavior", True, keys) for c in g]

    plain = sample(False, False)
    unfolded = sample(False, True)  # shared prefill through the LoRA path
    for fast in (sample(True, False), sample(True, True), unfolded):
        assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
        torch.testing.assert_close(
            torch.tensor([c.logp for c in fast]), torch.tensor([c.logp for c in plain]), atol=1e-4, rtol=0
        )
    for n, p in tiny.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    # and the model sampled is the behavior model, not the base: its teacher-forced log-probs match
    batch = build_batch(
        [p for p in prompts for _ in range(3)], [c.token_ids for c in plain], tiny.tokenizer.pad_token_id
    )
    want = ens.logps("behavior", batch)[0]
    torch.testing.assert_close(torch.tensor([c.logp for c in sample(True, True)]), want, atol=1e-4, rtol=0)
    assert (ens.logps(None, batch)[0] - want).abs().max() > 1e-2


def _sharp_bf16_ensemble(scale: float):
    """tiny-random-llama in bf16 with a peaked head (so a small change of the logits changes tokens) and a merged
    2-member behavior adapter whose delta-W is near bf16's resolution of the base weights."""
    from bpo.model.policy import load_policy

    policy = load_policy("tiny-random-llama", device="cpu", dtype="bfloat16")
    with torch.no_grad():
        policy.model.lm_head.weight.mul_(20.0)
    gen = torch.Generator().manual_seed(1)
    ens = Ensemble.create(policy.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), 2)
    with torch.no_grad():
        for m in ens.members:
            for p in ens.member_parameters(m):
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    ens.merge("behavior")
    return policy, ens


def test_bf16_sampling_draws_from_the_behavior_adapter_not_a_rounded_fold():
    # folding delta-W into bf16 weights rounds part of it away: the folded model then samples other tokens than
    # the behavior model whose teacher-forced log-probs are the reference. In bf16 bpo samples unfolded.
    policy, ens = _sharp_bf16_ensemble(0.02)
    texts = ["hello there", "a much longer prompt than the first one", "xy", "another one", "what is up", "zz top"]
    prompts = [policy.encode_prompt(t) for t in texts]
    keys = [f"k{i}" for i in range(len(prompts))]

    def sample(fold: bool) -> list[Completion]:
        params = SamplingConfig(max_new_tokens=16, batch_size=6, fold_adapter=fold)
        return [c for g in HFBackend(policy, ens).generate(prompts, 2, params, "behavior", True, keys) for c in g]

    unfolded = sample(False)
    with ens.folded("behavior"):  # what a fold into bf16 weights samples: the test can tell the two apart
        rounded = [c for g in HFBackend(policy).generate(prompts, 2, SamplingConfig(max_new_tokens=16), None, True,
                                                          keys) for c in g]  # fmt: skip
    assert [c.token_ids for c in rounded] != [c.token_ids for c in unfolded]
    default = sample(True)  # sampling.fold_adapter's default
    assert [c.token_ids for c in default] == [c.token_ids for c in unfolded]
    assert [c.logp for c in default] == [c.logp for c in unfolded]
    assert not ens.folds_exactly("behavior")


def test_a_bf16_fold_rounds_once():
    # the engines are given folded weights: W + delta-W is summed in fp32 and rounded to bf16 once, not delta-W
    # rounded first and the sum rounded again
    policy, ens = _sharp_bf16_ensemble(0.02)
    layer = policy.model.model.layers[0].self_attn.q_proj
    weight = layer.get_base_layer().weight
    want = (weight.float() + layer.get_delta_weight("behavior").float()).to(torch.bfloat16)
    with ens.folded("behavior"):
        assert torch.equal(weight, want)


def test_a_models_own_generation_settings_do_not_reach_sampling(tiny):
    # a Hub model's generation_config (repetition penalty, no-repeat n-grams, a minimum length) must not shape
    # bpo's samples, nor the log-probs the sampler records as BPO's reference
    prompts = [tiny.encode_prompt(t) for t in ["hello there", "a much longer prompt than the first one", "xy"]]
    keys = ["a", "b", "c"]

    def draw(sample: bool) -> list[Completion]:
        params = SamplingConfig(max_new_tokens=16, batch_size=3, temperature=1.0 if sample else 0.0)
        return [c for g in HFBackend(tiny).generate(prompts, 2, params, None, True, keys) for c in g]

    plain = draw(True), draw(False)
    own = tiny.model.generation_config
    own.repetition_penalty, own.no_repeat_ngram_size, own.min_new_tokens = 1.5, 2, 10
    own.eos_token_id = tiny.tokenizer.eos_token_id
    for before, after in zip(plain, (draw(True), draw(False))):
        assert [c.token_ids for c in after] == [c.token_ids for c in before]
        assert [c.logp for c in after] == [c.logp for c in before]
    assert tiny.model.generation_config is own and own.repetition_penalty == 1.5  # the model's own is put back
    from bpo.model.sampling import ignored_generation_settings  # what the run log names

    assert set(ignored_generation_settings(tiny.model)) == {"min_new_tokens", "no_repeat_ngram_size",
                                                            "repetition_penalty"}  # fmt: skip
