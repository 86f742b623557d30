import math

import pytest
import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer

from bpo.model.ensemble import Ensemble
from bpo.model.logprobs import build_batch
from bpo.model.policy import load_policy

K = 3


def make_ensemble(k: int = K, dropout: float = 0.0) -> Ensemble:
    policy = load_policy("tiny-random-llama", device="cpu")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=dropout)
    ens = Ensemble.create(policy.model, lora, k, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():  # B starts at zero; give every member a distinct, non-trivial delta-W
        for name in ens.members:
            for p in ens.member_parameters(name):
                p.normal_(0, 0.2)
    return ens


def first_layer(ens: Ensemble) -> LoraLayer:
    return next(m for m in ens.peft.modules() if isinstance(m, LoraLayer))


def delta(layer: LoraLayer, name: str) -> torch.Tensor:
    return layer.scaling[name] * layer.lora_B[name].weight @ layer.lora_A[name].weight


def test_exact_merge_is_mean_delta_w():
    ens = make_ensemble()
    ens.merge("behavior", "exact")
    assert ens.peft.peft_config["behavior"].r == 4 * K
    x = torch.randn(5, first_layer(ens).in_features)
    for layer in (m for m in ens.peft.modules() if isinstance(m, LoraLayer)):
        x = torch.randn(5, layer.in_features)
        mean_delta = sum(delta(layer, m) for m in ens.members) / K
        expected = layer.base_layer(x) + x @ mean_delta.T
        with ens.active("behavior"), torch.no_grad():
            got = layer(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_exact_merge_equals_peft_cat_combination():
    # PEFT's own "cat" combination (rank K*r, delta-W = sum of w_i * s_i * B_i A_i) is the oracle
    ens = make_ensemble()
    ens.merge("behavior", "exact")
    ens.peft.base_model.add_weighted_adapter(ens.members, [1.0 / K] * K, "oracle", combination_type="cat")
    batch = tiny_batch()
    torch.testing.assert_close(ens.logps("behavior", batch)[0], ens.logps("oracle", batch)[0], atol=1e-5, rtol=0)
    for layer in (m for m in ens.peft.modules() if isinstance(m, LoraLayer)):
        torch.testing.assert_close(delta(layer, "behavior"), delta(layer, "oracle"), atol=1e-6, rtol=0)


def test_linear_merge_has_cross_terms():
    ens = make_ensemble()
    ens.merge("behavior", "linear")
    ens.merge("exact", "exact")
    layer = first_layer(ens)
    w = 1.0 / K
    a = sum(math.sqrt(w * layer.scaling[m]) * layer.lora_A[m].weight for m in ens.members)
    b = sum(math.sqrt(w * layer.scaling[m]) * layer.lora_B[m].weight for m in ens.members)
    torch.testing.assert_close(delta(layer, "behavior"), layer.scaling["behavior"] * b @ a)
    cross = sum(
        w * math.sqrt(layer.scaling[i] * layer.scaling[j]) * layer.lora_B[i].weight @ layer.lora_A[j].weight
        for i in ens.members
        for j in ens.members
        if i != j
    )
    torch.testing.assert_close(delta(layer, "behavior") - delta(layer, "exact"), cross, atol=1e-5, rtol=0)
    assert cross.abs().max() > 1e-2  # the difference is real, not rounding


def test_merge_of_one_member_is_that_member():
    ens = make_ensemble(k=1)
    ens.merge("behavior")
    layer = first_layer(ens)
    torch.testing.assert_close(delta(layer, "behavior"), delta(layer, "member0"))


def tiny_batch():
    return build_batch([[5, 6, 7], [8, 9]], [[10, 11, 12], [13, 14]], pad_token_id=256)


def test_snapshot_is_isolated_from_training():
    ens = make_ensemble()
    batch = tiny_batch()
    ens.snapshot("member0", "sft")
    ens.merge("behavior")
    before = {n: ens.logps(n, batch)[0] for n in ("sft", "behavior", "member0")}
    torch.testing.assert_close(before["sft"], before["member0"])
    opt = torch.optim.SGD(ens.member_parameters("member0"), lr=0.5)
    for _ in range(3):
        summed, _ = ens.logps("member0", batch, grad=True)
        (-summed.sum()).backward()
        opt.step()
        opt.zero_grad()
    after = {n: ens.logps(n, batch)[0] for n in ("sft", "behavior", "member0")}
    torch.testing.assert_close(after["sft"], before["sft"], atol=0, rtol=0)
    torch.testing.assert_close(after["behavior"], before["behavior"], atol=0, rtol=0)
    assert (after["member0"] - before["member0"]).abs().max() > 1e-3
    assert not any(p.requires_grad for n, p in ens.peft.named_parameters() if ".sft." in n or ".behavior." in n)


def test_only_members_train_and_base_is_shared():
    ens = make_ensemble()
    ens.merge("behavior")
    ens.snapshot("behavior", "ref")
    trainable = {n for n, p in ens.peft.named_parameters() if p.requires_grad}
    assert trainable and all(any(f".{m}." in n for m in ens.members) for n in trainable)
    # one base model: every adapter of a layer sits on that layer's single base weight, and the
    # model holds one base weight per adapted layer however many adapters there are
    layers = [m for m in ens.peft.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        assert set(layer.lora_A) == {*ens.members, "behavior", "ref"}
    bases = [p for n, p in ens.peft.named_parameters() if n.endswith("base_layer.weight")]
    assert len(bases) == len(layers) and len({p.data_ptr() for p in bases}) == len(layers)
    # switching adapters never touches the base: with adapters disabled it is the plain model
    fresh = load_policy("tiny-random-llama", device="cpu").model
    from bpo.model.logprobs import sequence_logps

    with torch.no_grad():
        plain = sequence_logps(fresh, tiny_batch())[0]
    for name in (*ens.members, "behavior", None):
        ens.logps(name, tiny_batch())
        torch.testing.assert_close(ens.logps(None, tiny_batch())[0], plain, atol=0, rtol=0)


def test_saved_merge_loads_with_peft(tmp_path):
    ens = make_ensemble()
    ens.merge("behavior")
    batch = tiny_batch()
    want = ens.logps("behavior", batch)[0]
    ens.save(tmp_path, ["behavior", *ens.members])
    assert (tmp_path / "behavior" / "adapter_config.json").exists()
    fresh = load_policy("tiny-random-llama", device="cpu").model
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "behavior"))
    from bpo.model.logprobs import sequence_logps

    with torch.no_grad():
        got = sequence_logps(loaded, batch)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and back into an ensemble: members restored from PEFT folders give the same merge
    again = Ensemble.from_adapters(
        load_policy("tiny-random-llama", device="cpu").model, [tmp_path / m for m in ens.members]
    )
    again.merge("behavior")
    torch.testing.assert_close(again.logps("behavior", batch)[0], want, atol=1e-5, rtol=0)


def test_unknown_adapter_is_a_clear_error():
    ens = make_ensemble(k=1)
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        ens.logps("nope", tiny_batch())
    with pytest.raises(ValueError, match="unknown merge method"):
        ens.merge("x", "svd")


@pytest.mark.parametrize("method", ["exact", "linear"])
def test_merged_and_snapshot_adapters_run_without_dropout(method):
    # members SFT'd with dropout 0.5; the model is in eval mode, as during DAP training
    ens = make_ensemble(dropout=0.5)
    ens.peft.eval()
    ens.merge("behavior", method)
    ens.snapshot("behavior", "sft")
    batch = tiny_batch()
    for name in ("behavior", "sft"):
        torch.testing.assert_close(ens.logps(name, batch)[0], ens.logps(name, batch)[0], atol=0, rtol=0)
        assert ens.peft.peft_config[name].lora_dropout == 0.0  # and saved so
    ens.peft.train()  # even in training mode (member SFT), a frozen adapter has no dropout
    torch.testing.assert_close(ens.logps("behavior", batch)[0], ens.logps("behavior", batch)[0], atol=0, rtol=0)
    ens.disable_dropout()  # DAP: the members lose theirs too
    torch.testing.assert_close(ens.logps("member0", batch)[0], ens.logps("member0", batch)[0], atol=0, rtol=0)
