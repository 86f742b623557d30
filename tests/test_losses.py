import math

import pytest
import torch

from bpo.errors import ConfigError
from bpo.model.logprobs import build_batch, sequence_logps
from bpo.registry import LOSSES
from bpo.train.losses import dap_loss


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def loss_at(delta: float, kind: str, beta: float = 0.1, eps: float = 0.0) -> float:
    # policy chosen - ref chosen = delta, rejected ratios 0
    params = {"label_smoothing": eps} if kind == "dpo" else {}  # each loss takes only its own (Loss.params)
    losses, _ = dap_loss(t(delta - 3.0), t(-7.0), t(-3.0), t(-7.0), kind, beta, **params)
    return losses.item()


def test_dpo_hand_values():
    assert loss_at(0.0, "dpo") == pytest.approx(math.log(2))
    assert loss_at(0.0, "dpo", eps=0.3) == pytest.approx(math.log(2))
    # beta*Delta = 1: -log sigmoid(1) = log(1 + e^-1)
    assert loss_at(10.0, "dpo") == pytest.approx(math.log(1 + math.exp(-1)))
    # label smoothing 0.2: 0.8 * log(1+e^-1) + 0.2 * log(1+e^1)
    assert loss_at(10.0, "dpo", eps=0.2) == pytest.approx(0.8 * 0.3132616875 + 0.2 * 1.3132616875)


def test_ipo_target_is_one_over_two_beta():
    assert loss_at(5.0, "ipo", beta=0.1) == pytest.approx(0.0)
    assert loss_at(0.0, "ipo", beta=0.1) == pytest.approx(25.0)
    assert loss_at(1.0, "ipo", beta=0.5) == pytest.approx(0.0)
    assert loss_at(3.0, "ipo", beta=0.5) == pytest.approx(4.0)


def test_slic_hinge_edges():
    assert loss_at(0.0, "slic") == pytest.approx(1.0)
    assert loss_at(10.0, "slic") == pytest.approx(0.0)  # exactly at the hinge
    assert loss_at(9.0, "slic") == pytest.approx(0.1)
    assert loss_at(25.0, "slic") == 0.0
    assert loss_at(-10.0, "slic") == pytest.approx(2.0)


def test_metrics_use_trl_names_and_values():
    _, m = dap_loss(t(-1.0, -2.0), t(-3.0, -1.0), t(-2.0, -2.0), t(-2.0, -2.0), "dpo", beta=0.5)
    assert m["rewards/chosen"].item() == pytest.approx(0.5 * (1.0 + 0.0) / 2)
    assert m["rewards/rejected"].item() == pytest.approx(0.5 * (-1.0 + 1.0) / 2)
    assert m["rewards/margins"].item() == pytest.approx(0.25)
    assert m["rewards/accuracies"].item() == pytest.approx(0.5)
    assert m["logps/chosen"].item() == pytest.approx(-1.5)
    with pytest.raises(ConfigError, match="train.loss = 'kto': unknown; known: dpo, ipo, simpo, slic"):
        dap_loss(t(0), t(0), t(0), t(0), "kto")


def manual_logps(model, prompt, response):
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    per_token = logits.gather(-1, targets[:, None]).squeeze(-1)
    return per_token[len(prompt) - 1 :].sum().item()


@pytest.fixture()
def rows():
    prompts = [[5, 9, 23, 41, 7], [12, 3], [100, 101, 102]]
    responses = [[60, 61, 62], [70, 71, 72, 73, 74, 75], [80]]
    return prompts, responses


def test_response_only_logps_match_hand_computation(tiny, rows):
    prompts, responses = rows
    model = tiny.model
    pad = tiny.tokenizer.pad_token_id
    with torch.no_grad():
        expected = [manual_logps(model, p, r) for p, r in zip(prompts, responses)]
        for side in ("left", "right"):
            batch = build_batch(prompts, responses, pad, padding_side=side)
            for projection in (True, False):
                summed, mean = sequence_logps(model, batch, response_only_projection=projection)
                assert summed.tolist() == pytest.approx(expected, abs=1e-4), (side, projection)
                assert mean.tolist() == pytest.approx([e / len(r) for e, r in zip(expected, responses)], abs=1e-5)


def test_prompt_tokens_and_padding_never_count(tiny, rows):
    prompts, responses = rows
    pad = tiny.tokenizer.pad_token_id
    batch = build_batch(prompts, responses, pad)
    assert batch.response_mask.sum().item() == sum(len(r) for r in responses)
    # a different pad id or a much longer padded width changes nothing
    with torch.no_grad():
        a, _ = sequence_logps(tiny.model, batch)
        b, _ = sequence_logps(tiny.model, build_batch(prompts, responses, 0))
        longer = build_batch(prompts + [[1] * 40], responses + [[2] * 30], pad)
        c, _ = sequence_logps(tiny.model, longer)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a, c[:3], atol=1e-5, rtol=0)


def test_logps_carry_gradients(tiny, rows):
    prompts, responses = rows
    batch = build_batch(prompts, responses, tiny.tokenizer.pad_token_id)
    summed, _ = sequence_logps(tiny.model, batch)
    summed.sum().backward()
    assert tiny.model.lm_head.weight.grad is not None


def test_shared_prompt_logps_equal_the_plain_pass(tiny, rows):
    from bpo.model.logprobs import build_shared_batch, shared_prompt_logps

    prompts, responses = rows
    pairs = [[r, list(reversed(r)) + [9]] for r in responses]  # two responses per prompt
    pad = tiny.tokenizer.pad_token_id
    shared = build_shared_batch(prompts, pairs, pad)
    flat_prompts = [p for p in prompts for _ in range(2)]
    flat = [r for rs in pairs for r in rs]
    plain = build_batch(flat_prompts, flat, pad)
    got_sum, got_mean = shared_prompt_logps(tiny.model, shared)
    want_sum, want_mean = sequence_logps(tiny.model, plain)
    torch.testing.assert_close(got_sum, want_sum, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_mean, want_mean, atol=1e-5, rtol=0)
    # gradients reach the prompt's computation through the repeated cache
    got_sum.sum().backward()
    g_shared = tiny.model.model.layers[0].self_attn.k_proj.weight.grad.clone()
    tiny.model.zero_grad()
    want_sum.sum().backward()
    g_plain = tiny.model.model.layers[0].self_attn.k_proj.weight.grad
    torch.testing.assert_close(g_shared, g_plain, atol=1e-4, rtol=1e-3)


def test_simpo_hand_values():
    # SimPO: -log sigmoid(beta * Delta - gamma) on mean log-probs, no reference (zeros)
    zero = t(0.0)
    losses, m = dap_loss(t(-1.0), t(-1.3), zero, zero, "simpo", beta=2.0, simpo_gamma=1.0)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-(2.0 * 0.3 - 1.0))))  # 0.9130
    assert m["rewards/chosen"].item() == pytest.approx(-2.0)  # beta * mean log-prob, as TRL's CPO/SimPO
    # gamma is a margin: at beta * Delta = gamma the loss is log 2
    assert dap_loss(t(-1.0), t(-1.5), zero, zero, "simpo", beta=2.0, simpo_gamma=1.0)[0].item() == pytest.approx(
        math.log(2)
    )
    # label smoothing does not reach SimPO, nor gamma the other losses: each declares what it takes
    assert [p.name for p in LOSSES.get("simpo").params] == ["simpo_gamma"]
    assert [p.name for p in LOSSES.get("dpo").params] == ["label_smoothing"]
    assert LOSSES.get("ipo").params == LOSSES.get("slic").params == ()
    with pytest.raises(TypeError):
        dap_loss(t(-1.0), t(-1.5), zero, zero, "simpo", 2.0, label_smoothing=0.3)
