"""`neurobridge bench train` reports steady-state rates: the first fifth of a run's reports is warm-up on both the
plain-loop and the Ray side, so a slow start does not count as Ray overhead; each Ray run is
bracketed by its own plain loops and the median over rounds is quoted, so one run in a slow minute does not decide."""

from __future__ import annotations

import pytest
from neurobridge.bench.train import _steady, _warm, ray_overhead


def test_the_first_fifth_of_the_reports_is_warm_up_and_at_least_the_first():
    assert [_warm(n) for n in (2, 5, 9, 10, 40)] == [1, 1, 1, 2, 8]


def test_a_slow_start_does_not_lower_the_steady_rate():
    # 40 reports every 5 steps of 100 tokens each: 0.1 s per report after 8 slow ones of 0.5 s
    marks, t = [], 0.0
    for i in range(40):
        t += 0.5 if i < 8 else 0.1
        marks.append((5 * (i + 1), t, 500 * (i + 1)))
    steady = _steady(marks)
    assert steady["tokens_per_s"] == pytest.approx(5000.0) and steady["steps"] == 5 * 31


def test_too_short_a_run_is_refused_rather_than_measured():
    with pytest.raises(ValueError, match="too few steps"):
        _steady([(5, 0.1, 500), (10, 0.2, 1000)])


def test_each_ray_run_is_measured_against_the_plain_loops_just_before_and_after_it():
    # the VM speeds up between rounds: round 1 brackets 100/80 (ref 90), round 2 brackets 80/120 (ref 100)
    each, _ = ray_overhead([100.0, 80.0, 120.0], [81.0, 95.0])
    assert each == pytest.approx([0.10, 0.05])


def test_the_quoted_overhead_is_the_median_of_the_rounds():
    # a steady VM at 100 tokens/s: rounds at 2, 15 and 5 % overhead quote 5 %; two rounds quote their midpoint
    each, quoted = ray_overhead([100.0] * 4, [98.0, 85.0, 95.0])
    assert each == pytest.approx([0.02, 0.15, 0.05]) and quoted == pytest.approx(0.05)
    assert ray_overhead([100.0] * 3, [98.0, 94.0])[1] == pytest.approx(0.04)


def test_rounds_without_a_plain_loop_on_both_sides_are_refused():
    with pytest.raises(ValueError, match="need 3 bracketing plain loops"):
        ray_overhead([100.0, 90.0], [80.0, 85.0])
