"""`neurobridge bench train` reports steady-state rates: the first fifth of a run's reports is warm-up on both the
plain-loop and the Ray side, so a slow start does not count as Ray overhead."""

from __future__ import annotations

import pytest
from neurobridge.bench.train import _steady, _warm


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
