import pytest

from bpo.evaluation import bootstrap_ci, mean_ci, win_rate


def test_win_rate_hand_values():
    r = win_rate([3, 2, 1, 5], [1, 2, 4, 0])
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (2, 1, 1, 4)
    assert r["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert r["ci_low"] <= r["win_rate"] <= r["ci_high"]
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
