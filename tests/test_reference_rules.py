"""TR-DPO's moving reference (arXiv 2404.09656) and SimPO's absent one, against hand-computed values."""

import math

import pytest
import torch
from conftest import tiny_config
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from transformers import LlamaForCausalLM

from bpo.config import load_config
from bpo.model.ensemble import Ensemble
from bpo.model.policy import byte_tokenizer, tiny_llama_config
from bpo.train.loop import train


def deltas(ens: Ensemble, name: str) -> dict[str, torch.Tensor]:
    return {
        n: m.get_delta_weight(name).detach().clone() for n, m in ens.peft.named_modules() if isinstance(m, LoraLayer)
    }


def policy_deltas(ens: Ensemble) -> dict[str, torch.Tensor]:
    """pi_theta's delta-W, by hand: the mean over members of scaling * B @ A."""
    out = {}
    for n, m in ens.peft.named_modules():
        if isinstance(m, LoraLayer):
            parts = [m.scaling[k] * m.lora_B[k].weight @ m.lora_A[k].weight for k in ens.members]
            out[n] = (sum(parts) / len(parts)).detach().clone()
    return out


def tiny_ensemble(k: int = 2) -> Ensemble:
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tok))
    ens = Ensemble.create(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), k)
    with torch.no_grad():  # members away from zero, as after training
        for p in (p for n, p in ens.peft.named_parameters() if "lora_B" in n):
            p.normal_(0, 0.05)
    return ens


def test_mix_is_the_soft_update_on_delta_w_and_runs_as_that_model():
    ens = tiny_ensemble()
    ens.merge("behavior")
    start = policy_deltas(ens)
    ens.mix("behavior", "tr", 0.6)  # created from its source: alpha is 1 the first time
    for n, d in deltas(ens, "tr").items():
        torch.testing.assert_close(d, start[n], rtol=0, atol=1e-6)
    with torch.no_grad():
        for p in (p for n, p in ens.peft.named_parameters() if "lora_A.member" in n):
            p.add_(0.1)  # the policy moves
    ens.merge("current")
    now = policy_deltas(ens)
    ens.mix("current", "tr", 0.6)
    for n, d in deltas(ens, "tr").items():
        torch.testing.assert_close(d, 0.6 * now[n] + 0.4 * start[n], rtol=0, atol=1e-6)
        assert not torch.allclose(d, now[n], atol=1e-4)  # and not simply the policy
    # the adapter is that model: the same logits as its delta-W added into the base weights
    x = torch.randint(3, 200, (2, 9))
    with ens.active("tr"), torch.no_grad():
        logits = ens.peft(input_ids=x).logits
    with ens.folded("tr"), torch.no_grad():
        torch.testing.assert_close(ens.peft(input_ids=x).logits, logits, rtol=0, atol=1e-4)


def run_recording(tmp_path, **over):
    cfg = load_config(None, tiny_config(tmp_path, **over))
    seen = []

    def record(run, step, m):
        seen.append((step, policy_deltas(run.ens), deltas(run.ens, "tr"), m))

    train(cfg, evaluate=False, on_step=record)
    return seen


def test_tr_dpo_soft_update_follows_its_recursion_every_step(tmp_path):
    seen = run_recording(
        tmp_path, **{"train.reference": "tr", "train.ref_model_mixup_alpha": 0.6, "train.ref_model_sync_steps": 1}
    )
    # step 0 starts from pi_ref = the start model, whose loss is log 2 (K = 1: policy = reference = start)
    assert seen[0][3]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # after step s: pi_ref(s) = 0.6 pi_theta(s) + 0.4 pi_ref(s - 1), on delta-W
    for (_, _, prev, _), (step, policy, ref, _) in zip(seen, seen[1:]):
        for n in ref:
            torch.testing.assert_close(ref[n], 0.6 * policy[n] + 0.4 * prev[n], rtol=0, atol=1e-6, msg=f"step {step}")
    assert len(seen) == 6


def test_tr_dpo_hard_update_copies_the_policy_every_tau_steps_whatever_f(tmp_path):
    seen = run_recording(
        tmp_path,
        **{
            "train.reference": "tr",
            "train.ref_model_mixup_alpha": 1.0,
            "train.ref_model_sync_steps": 2,
            "train.phases": 3,
        },
    )
    prev = None
    for step, policy, ref, _ in seen:
        synced = (step + 1) % 2 == 0
        for n in ref:
            if synced:
                torch.testing.assert_close(ref[n], policy[n], rtol=0, atol=1e-6)
            elif prev is not None:
                assert torch.equal(ref[n], prev[n]), f"moved between syncs at step {step}"
        prev = ref


def test_tr_dpo_hard_update_every_step_makes_each_step_start_at_log_2(tmp_path):
    # tau = 1, alpha = 1, K = 1: the reference is the policy as each step begins, so Delta = 0 there
    seen = run_recording(
        tmp_path, **{"train.reference": "tr", "train.ref_model_mixup_alpha": 1.0, "train.ref_model_sync_steps": 1}
    )
    assert [m["loss"] for *_, m in seen] == pytest.approx([math.log(2)] * 6, abs=1e-4)


@pytest.mark.slow
def test_a_stopped_tr_dpo_run_resumes_exactly(tmp_path):
    # the dense TR-DPO reference is part of the checkpoint: stopped after step 3 and resumed, the run ends
    # with the same adapters and metrics as one that never stopped
    from faults import snapshot

    from bpo.errors import Interrupted

    over = {"train.reference": "tr", "train.ref_model_mixup_alpha": 0.6, "train.save_every": 1}
    whole = load_config(None, tiny_config(tmp_path / "a", **over))
    train(whole, evaluate=False)
    parted = load_config(None, tiny_config(tmp_path / "b", **{**over, "sft_dir": str(tmp_path / "a" / "sft")}))

    def stop(run, step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        train(parted, evaluate=False, on_step=stop)
    train(parted, resume=True, evaluate=False)
    got, want = snapshot(tmp_path / "b" / "run"), snapshot(tmp_path / "a" / "run")
    assert got["metrics"] == want["metrics"] and got["ledger"] == want["ledger"]
    for key, value in want["adapters"].items():
        assert torch.equal(got["adapters"][key], value), key
