import pytest

from bpo.stats import bootstrap_ci, mean_ci, win_rate


def test_win_rate_hand_values():
    r = win_rate([3, 2, 1, 5], [1, 2, 4, 0])
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (2, 1, 1, 4)
    assert r["win_rate"] == 2 / 4  # the paper's count: a tie is not a win
    assert r["tie_rate"] == 1 / 4
    assert r["win_rate_ties_half"] == (2 + 0.5) / 4
    assert r["ci_low"] <= r["win_rate"] <= r["ci_high"]
    lo, hi = r["win_rate_ties_half_ci"]
    assert lo <= r["win_rate_ties_half"] <= hi
    all_ties = win_rate([1, 1, 1], [1, 1, 1])
    assert all_ties["win_rate"] == 0.0 and all_ties["win_rate_ties_half"] == 0.5 and all_ties["ci_high"] == 0.0
    with pytest.raises(ValueError, match="paired"):
        win_rate([1], [1, 2])


def test_bootstrap_interval_of_a_constant_is_the_constant():
    assert bootstrap_ci([2.0] * 10) == (2.0, 2.0)


def test_bootstrap_interval_matches_the_normal_approximation():
    # 0/1 outcomes, p = 0.5, n = 400: the 95% interval is about +- 1.96 * 0.5 / 20 = +- 0.049
    values = [0.0, 1.0] * 200
    lo, hi = bootstrap_ci(values, n=4000, seed=1)
    assert lo == pytest.approx(0.5 - 0.049, abs=0.01) and hi == pytest.approx(0.5 + 0.049, abs=0.01)
    m = mean_ci(values)
    assert m["mean"] == 0.5 and m["n"] == 400


def test_t_quantiles_match_tables():
    from bpo.stats import t_quantile_975

    assert t_quantile_975(2) == 4.303
    assert t_quantile_975(20) == pytest.approx(2.086, abs=0.002)
    assert t_quantile_975(30) == pytest.approx(2.042, abs=0.002)
    assert t_quantile_975(10_000) == pytest.approx(1.960, abs=0.001)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_seed_interval_by_hand():
    from bpo.stats import seed_mean_ci

    # seeds 1, 2, 3: mean 2, sd 1, half-width t_2 * 1 / sqrt(3) = 4.303 / 1.7321 = 2.4843
    r = seed_mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["sd"] == pytest.approx(1.0) and r["n"] == 3
    assert r["ci_low"] == pytest.approx(2 - 2.4843, abs=1e-3) and r["ci_high"] == pytest.approx(2 + 2.4843, abs=1e-3)
    one = seed_mean_ci([0.7])
    assert one["mean"] == 0.7 and one["ci_low"] != one["ci_low"]  # nan: one seed has no spread


def test_detectable_difference_has_80_percent_power():
    """A true gap of the stated size, over that many seeds at that spread, is found by the t-test 4 times in 5."""
    import numpy as np

    from bpo.stats import detectable_difference, seed_mean_ci

    # by hand: 3 seeds, sd 1: (t_0.975,2 + t_0.80,2) / sqrt(3) = (4.303 + 1.061) / 1.7321 = 3.097
    assert detectable_difference([1.0, 2.0, 3.0]) == pytest.approx(3.097, abs=1e-3)
    assert np.isnan(detectable_difference([0.4]))
    rng = np.random.default_rng(0)
    for n in (3, 5, 18):
        d = detectable_difference(np.linspace(-1, 1, n) / np.std(np.linspace(-1, 1, n), ddof=1))  # sd exactly 1
        found = [seed_mean_ci(rng.normal(d, 1.0, n))["ci_low"] > 0 for _ in range(4000)]
        assert np.mean(found) == pytest.approx(0.80 - 0.025, abs=0.04), n  # the other tail adds ~0 power


def test_a_claims_verdict_says_only_what_its_interval_supports():
    from bpo.stats import verdict

    # by hand, 3 seeds: mean 2, sd 1, t_0.975,2 = 4.303: 2 +/- 4.303 / sqrt(3) = [-0.484, +4.484]
    assert verdict([1.0, 2.0, 3.0]) == "not settled at 3 seeds: +2.00 [-0.48, +4.48]; detectable difference 3.10"
    # mean 0.2, sd 0.1: 0.2 +/- 0.248 is [-0.05, +0.45]; shifted up by 0.1 it is [+0.05, +0.55]
    assert verdict([0.3, 0.4, 0.5]).startswith("holds at 3 seeds: +0.40 [+0.15, +0.65]")
    assert verdict([-0.3, -0.4, -0.5]).startswith("does not hold at 3 seeds: the other is ahead, -0.40")
    # sd 0.01 around 0.02: [-0.005, +0.045], inside +/-0.15 though it includes 0
    assert verdict([0.01, 0.02, 0.03]) == "does not hold at 3 seeds: no gap of 0.15 or more, +0.02 [-0.00, +0.04]"
    assert verdict([0.01, 0.02, 0.03], margin=0.01).startswith("not settled")
    assert verdict([0.5]) == "not settled at 1 seed (no interval)"
    # B ahead, but inside the margin (TR-DPO soft and BPO F = T at beta 0.1 differ by 0.0003 on both seeds): say
    # that the gap is negligible, not just who is ahead; [-0.085, -0.035]
    said = verdict([-0.05, -0.06, -0.07])
    assert said == "does not hold at 3 seeds: the other is ahead, by less than 0.15, -0.06 [-0.08, -0.04]", said


def test_prompt_bootstrap_resamples_a_prompt_with_all_its_seeds():
    import numpy as np

    from bpo.stats import pooled_win_rate, prompt_bootstrap_ci

    values = np.array([0.0, 1.0] * 20)
    # three seeds that agree on every prompt carry no more information than one seed
    same = np.tile(values, (3, 1))
    assert prompt_bootstrap_ci(same) == bootstrap_ci(values)
    naive_lo, naive_hi = bootstrap_ci(same.ravel())  # prompts of different seeds taken as independent
    lo, hi = prompt_bootstrap_ci(same)
    assert hi - lo > 1.5 * (naive_hi - naive_lo)
    w = pooled_win_rate(same, np.full_like(same, 0.5))
    assert w["win_rate"] == 0.5 and (w["ci_low"], w["ci_high"]) == bootstrap_ci(values)


def test_a_non_finite_judge_score_is_an_error_not_a_tie():
    with pytest.raises(ValueError, match="non-finite judge score at item 1"):
        win_rate([1.0, float("nan")], [0.0, 0.0])
