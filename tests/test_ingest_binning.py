"""ingest/binning: every spike counts in exactly the windows whose [start, end) holds it, whatever the layout;
counts never wrap; behaviour bins hold the mean of exactly their samples."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.ingest.binning import (
    UINT16_MAX,
    WindowGrid,
    bin_spikes,
    bin_timeseries,
    reference_histogram,
    to_uint16,
)


def expected_counts(times, units, n_units, grid):
    """Direct definition: per window, per unit, the spikes with start <= t < end, binned by offset."""
    out = np.zeros((len(grid.starts), n_units, grid.n_bins), dtype=np.int64)
    for w, (s, e) in enumerate(zip(grid.starts, grid.ends, strict=True)):
        m = (times >= s) & (times < e)
        b = np.minimum(((times[m] - s) / grid.bin_s).astype(int), grid.n_bins - 1)
        np.add.at(out[w], (units[m], b), 1)
    return out


spikes = st.integers(0, 150).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 20, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(0, 6), min_size=n, max_size=n),
    )
)


def layouts(times, units, grid):
    """The same spikes as each reader hands them over: unit-major runs (NWB), time-sorted (ALF), any order."""
    order = np.lexsort((times, units))
    pieces = np.concatenate([[0], np.cumsum(np.bincount(units, minlength=7))])
    yield "unit runs", (times[order], units[order], 7, grid, pieces, np.arange(7))
    order = np.argsort(times, kind="stable")
    yield "time sorted", (times[order], units[order], 7, grid, np.array([0, len(times)]))
    if not grid.overlapping:  # windows that overlap need sorted runs to count a spike twice
        yield "any order", (times, units, 7, grid)


@settings(max_examples=40, deadline=None)
@given(
    spikes=spikes,
    starts=st.lists(st.floats(0, 18, allow_nan=False), min_size=1, max_size=12),
    n_bins=st.integers(1, 30),
    bin_ms=st.sampled_from([1.0, 5.0, 20.0, 50.0]),
)
def test_counts_match_the_window_definition_for_any_windows(spikes, starts, n_bins, bin_ms):
    times, units = np.array(spikes[0], dtype=float), np.array(spikes[1], dtype=np.int64)
    grid = WindowGrid(np.sort(np.array(starts)), n_bins, bin_ms / 1000)
    want = expected_counts(times, units, 7, grid)
    for layout, args in layouts(times, units, grid):
        got, clipped = bin_spikes(*args)
        assert clipped == 0 and got.dtype == np.uint16
        # window membership is exact; only a spike sitting on an inner bin edge may move by one bin
        assert np.array_equal(got.sum(axis=2), want.sum(axis=2)), layout
        assert (
            np.abs(got.astype(int) - want).sum()
            <= 2 * np.isclose(((times[:, None] - grid.starts[None]) / grid.bin_s) % 1, 0, atol=1e-9).sum()
        ), layout


@settings(max_examples=30, deadline=None)
@given(spikes=spikes, n_bins=st.integers(1, 50))
def test_tiling_windows_conserve_every_spike_inside_them(spikes, n_bins):
    times, units = np.sort(np.array(spikes[0], dtype=float)), np.array(spikes[1], dtype=np.int64)
    length = n_bins * 0.02
    grid = WindowGrid(np.arange(0, 21, length), n_bins, 0.02)
    counts, _ = bin_spikes(times, units, 7, grid, np.array([0, len(times)]))
    inside = (times >= grid.starts[0]) & (times < grid.ends[-1])
    assert counts.sum() == inside.sum()
    assert np.array_equal(counts.sum(axis=(0, 2)), np.bincount(units[inside], minlength=7))


def test_matches_the_per_unit_histogram_reference():
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 30, 20_000))
    units = rng.integers(0, 25, len(times))
    grid = WindowGrid(np.arange(0, 30, 1.0), 50, 0.02)
    ours, _ = bin_spikes(times, units, 25, grid)
    ref = reference_histogram(times, units, np.arange(25), np.arange(30 * 50 + 1) * 0.02)
    assert np.array_equal(ref.reshape(25, 30, 50).transpose(1, 0, 2), ours)


def test_a_spike_in_overlapping_windows_counts_in_each():
    grid = WindowGrid(np.array([0.0, 0.5]), 50, 0.02)  # [0, 1) and [0.5, 1.5)
    counts, _ = bin_spikes(np.array([0.71]), np.array([0]), 1, grid, np.array([0, 1]))
    assert counts[0, 0, 35] == 1 and counts[1, 0, 10] == 1


def test_counts_above_uint16_are_clipped_and_counted_never_wrapped():
    counts = np.array([[[0, 65_535, 65_536, 200_000]]])
    c16, clipped = to_uint16(counts)
    assert c16.dtype == np.uint16
    assert c16.tolist() == [[[0, UINT16_MAX, UINT16_MAX, UINT16_MAX]]]
    assert clipped == 2


def test_no_spikes_or_no_windows_give_empty_grids():
    grid = WindowGrid(np.array([0.0, 1.0]), 10, 0.1)
    assert bin_spikes(np.empty(0), np.empty(0, np.int64), 3, grid)[0].shape == (2, 3, 10)
    assert bin_spikes(np.array([0.5]), np.array([0]), 3, WindowGrid(np.empty(0), 10, 0.1))[0].shape == (0, 3, 10)


def test_counts_in_one_bin_above_uint16_are_clipped_and_reported():
    times = np.full(70_000, 0.5)
    for args in ((), (np.array([0, 70_000]),), (np.array([0, 70_000]), np.array([0]))):
        counts, clipped = bin_spikes(times, np.zeros(70_000, np.int64), 1, WindowGrid(np.array([0.0]), 10, 0.1), *args)
        assert counts[0, 0, 5] == UINT16_MAX and clipped == 1


@settings(max_examples=40, deadline=None)
@given(
    ticks=st.lists(st.integers(0, 3000), min_size=1, max_size=200),
    units=st.lists(st.integers(0, 6), min_size=200, max_size=200),
    first=st.integers(0, 40),
    n_bins=st.integers(1, 60),
)
def test_fixed_chunks_are_exact_even_for_spikes_on_window_edges(ticks, units, first, n_bins):
    """Spikes at 30 kHz sample times land exactly on 20 ms edges; chunk membership must still be exact."""
    times = np.array(ticks, dtype=float) / 30_000 * 10  # multiples of 1/3000 s: many sit on bin edges
    units = np.array(units[: len(times)], dtype=np.int64)
    bin_s = 0.02
    length = n_bins * bin_s
    grid = WindowGrid(first * 0.02 + np.arange(12) * length, n_bins, bin_s)
    assert grid.tiling
    want = expected_counts(times, units, 7, grid)
    for layout, args in layouts(times, units, grid):
        got, _ = bin_spikes(*args)
        assert np.array_equal(got.sum(axis=2), want.sum(axis=2)), layout


@settings(max_examples=40, deadline=None)
@given(
    stamps=st.lists(st.floats(0, 10, allow_nan=False), min_size=0, max_size=200),
    starts=st.lists(st.floats(0, 9, allow_nan=False), min_size=1, max_size=6),
    n_bins=st.integers(1, 12),
    k=st.integers(1, 3),
    nan_every=st.integers(0, 5),
)
def test_behaviour_bins_hold_the_mean_of_exactly_their_samples(stamps, starts, n_bins, k, nan_every):
    t = np.sort(np.array(stamps, dtype=np.float64))
    values = np.arange(len(t) * k, dtype=np.float64).reshape(len(t), k) % 7 - 3
    if nan_every:
        values[::nan_every, 0] = np.nan
    grid = WindowGrid(np.sort(np.array(starts)), n_bins, 0.1)
    got = bin_timeseries(t, values, grid)
    assert got.shape == (len(starts), n_bins, k) and got.dtype == np.float32
    for w, s in enumerate(grid.starts):
        for b in range(n_bins):
            lo = s + b * 0.1
            hi = grid.ends[w] if b == n_bins - 1 else s + (b + 1) * 0.1
            inside = values[(t >= lo) & (t < hi)]
            for c in range(k):
                finite = inside[:, c][np.isfinite(inside[:, c])]
                if len(finite) == 0:
                    assert np.isnan(got[w, b, c])  # a gap is NaN, never a zero
                else:
                    assert np.isclose(got[w, b, c], finite.mean(), atol=1e-5)
