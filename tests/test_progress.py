"""Progress lines: every long step says when it ends."""

import io

from rich.console import Console

from bpo.progress import Lines, StepClock, bar_text, step_line


def test_the_step_eta_does_not_count_a_phase_sampling_as_step_time():
    """The first step's ETA counted the phase's sampling as step time (17.4 min shown, ~8 left)."""
    clock = StepClock()
    clock.add({"time/step": 33.0, "time/sample": 20.0, "time/annotate": 0.5})  # step 1 of T = 16, F = 2
    eta = clock.eta(steps_left=15, phases_left=1)
    assert eta == 12.5 * 15 + 20.5  # 15 updates of 12.5 s, one more phase to collect
    assert eta < 33.0 * 15  # what the old estimate said


def test_long_tasks_in_a_log_say_their_eta():
    out = io.StringIO()
    lines = Lines(Console(file=out, width=80), interval=0.0)
    task = lines.add_task("member SFT", total=8)
    assert out.getvalue() == "member SFT 0/8 (starting)\n"  # said at once, not 30 s later
    lines.update(task, advance=2)
    assert "member SFT 2/8 (" in out.getvalue() and "eta " in out.getvalue()
    lines.update(task, advance=6)
    assert out.getvalue().splitlines()[-1].startswith("member SFT 8/8") and "eta" not in out.getvalue().splitlines()[-1]


def test_a_step_with_no_pairs_to_train_says_so_instead_of_a_nan_loss():
    """On an H200 a collapsed policy sampled 16 identical pairs: the line read 'loss nan margin nan', like a
    divergence, though no update was made (a non-finite loss stops the run)."""
    m = {"step": 2, "phase": 1, "annotations/used": 16, "time/step": 5.1, "pairs/kept": 0,
         "pairs/identical": 16, "pairs/ties": 0, "loss": float("nan")}  # fmt: skip
    line = step_line(m, 3, 30.0)
    assert "nan" not in line
    assert "no pairs to train (identical, tied or unlabelled): no update" in line
    trained = step_line({**m, "pairs/kept": 16, "pairs/identical": 0, "loss": 0.69, "rewards/margins": 0.01}, 3, 30.0)
    assert "loss 0.6900 margin 0.0100" in trained
    # the terminal's bar too ("training loss nan" was left on it)
    assert bar_text(m) == "training (no pairs: no update)" and bar_text({**m, "pairs/kept": 3, "loss": 0.5}) == (
        "training loss 0.500"
    )
