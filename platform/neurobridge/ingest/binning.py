"""Vectorised spike binning into sample windows.

Window membership is decided by exact comparisons with each window's ``[start, end)`` (searchsorted), so
the spikes counted in a window are exactly those a reader would select with ``start <= t < end``; only the bin
inside a window comes from arithmetic. No Python loop runs per spike or per bin; the overlapping-window path
loops over sorted pieces (units), never over spikes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

UINT16_MAX = np.iinfo(np.uint16).max
_BLOCK = 1 << 20  # spikes per vectorised step
_BLOCK_CELLS = 1 << 18  # cells per histogram when windows are filled block by block (cache-sized)


@dataclass(frozen=True)
class WindowGrid:
    """Sample windows of equal length: ``starts`` sorted ascending, each ``n_bins`` bins of ``bin_s``."""

    starts: np.ndarray
    n_bins: int
    bin_s: float

    @cached_property
    def ends(self) -> np.ndarray:
        ends = self.starts + self.n_bins * self.bin_s
        # Back-to-back windows (fixed chunks) must tile exactly: snap an end that misses the next start by
        # float rounding onto it, so no spike is counted twice or lost at a shared edge.
        if len(ends) > 1:
            touching = np.abs(ends[:-1] - self.starts[1:]) <= 1e-9 * np.maximum(1.0, np.abs(self.starts[1:]))
            ends[:-1][touching] = self.starts[1:][touching]
        return ends

    @property
    def overlapping(self) -> bool:
        return bool(len(self.starts) > 1 and np.any(self.starts[1:] < self.ends[:-1]))

    @cached_property
    def tiling(self) -> bool:
        """Back-to-back windows (fixed chunks): a spike's cell then follows from arithmetic on one grid."""
        return bool(len(self.starts) > 0 and np.array_equal(self.ends[:-1], self.starts[1:]))

    def subset(self, lo: int, hi: int) -> WindowGrid:
        return WindowGrid(self.starts[lo:hi], self.n_bins, self.bin_s)


def bin_spikes(
    times: np.ndarray,
    units: np.ndarray,
    n_units: int,
    grid: WindowGrid,
    pieces: np.ndarray | None = None,
    piece_units: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Counts ``[n_windows, n_units, n_bins]`` (uint16) of spikes ``(times, units)`` in ``grid``, and how many
    cells were clipped at 65535.

    ``pieces`` are offsets of runs of ``times`` that are each sorted: one per unit for NWB (then
    ``piece_units`` names each run's unit), one in all for ALF. They let each histogram be built where its
    input lies (per unit, or per block of windows), so the counts being filled stay in cache; without them
    the spikes may be in any order. Overlapping windows need them to count a spike in every window.
    """
    n_w, n_b = len(grid.starts), grid.n_bins
    out = np.zeros((n_w, n_units, n_b), dtype=np.uint16)
    if n_w == 0 or len(times) == 0:
        return out, 0
    if grid.overlapping:
        win, idx = _overlapping_members(times, grid, pieces)
        flat = (win * n_units + units[idx]) * n_b + _bins(times[idx], win, grid)
        return out, _store(out, np.bincount(flat, minlength=out.size).reshape(out.shape))
    clipped = 0
    if pieces is not None and piece_units is not None:
        for (a, b), unit in zip(zip(pieces[:-1], pieces[1:], strict=True), piece_units, strict=True):
            if b > a:
                cells, _ = _cells(times[a:b], grid, is_sorted=True)
                clipped += _store(out[:, unit, :], np.bincount(cells, minlength=n_w * n_b).reshape(n_w, n_b))
        return out, clipped
    if pieces is not None and len(pieces) == 2:
        per_block = max(1, _BLOCK_CELLS // (n_units * n_b))
        bounds = np.append(np.searchsorted(times, grid.starts[::per_block], side="left"), len(times))
        for k, w0 in enumerate(range(0, n_w, per_block)):
            sub = grid.subset(w0, w0 + per_block)
            t, u = times[bounds[k] : bounds[k + 1]], units[bounds[k] : bounds[k + 1]]
            counts = _histogram(t, u, n_units, sub, is_sorted=True)
            clipped += _store(out[w0 : w0 + per_block], counts)
        return out, clipped
    return out, _store(out, _histogram(times, units, n_units, grid))


def _histogram(
    times: np.ndarray, units: np.ndarray, n_units: int, grid: WindowGrid, is_sorted: bool = False
) -> np.ndarray:
    """int64 counts of non-overlapping windows for spikes in any order, in cache-sized spike blocks."""
    n_w, n_b = len(grid.starts), grid.n_bins
    flat = np.empty(len(times), dtype=np.int64)
    n_in = 0
    for a in range(0, len(times), _BLOCK):
        cells, keep = _cells(times[a : a + _BLOCK], grid, is_sorted)
        u = units[a : a + _BLOCK][keep if keep is not None else slice(None)]
        win = cells // n_b
        cells += win * ((n_units - 1) * n_b) + u * n_b  # (win * n_units + u) * n_b + bin
        flat[n_in : n_in + len(cells)] = cells
        n_in += len(cells)
    return np.bincount(flat[:n_in], minlength=n_w * n_units * n_b).reshape(n_w, n_units, n_b)


def _cells(t: np.ndarray, grid: WindowGrid, is_sorted: bool = False) -> tuple[np.ndarray, np.ndarray | slice | None]:
    """``window * n_bins + bin`` of each spike inside a window, and which spikes those are (None: all)."""
    if not grid.tiling:
        win, keep = _windows(t, grid)
        return win * grid.n_bins + _bins(t if keep is None else t[keep], win, grid), keep
    if is_sorted:  # the spikes inside the grid are one contiguous slice
        lo, hi = np.searchsorted(t, [grid.starts[0], grid.ends[-1]], side="left")
        keep = None if (lo, hi) == (0, len(t)) else slice(lo, hi)
    else:
        keep = (t >= grid.starts[0]) & (t < grid.ends[-1])
        keep = None if keep.all() else keep
    if keep is not None:
        t = t[keep]
    x = t - grid.starts[0]
    x *= 1.0 / grid.bin_s
    cells = x.astype(np.int64)
    np.clip(cells, 0, len(grid.starts) * grid.n_bins - 1, out=cells)
    # Arithmetic can misplace a spike only across a window edge, i.e. from a first or last bin: settle those
    # few by exact comparison with the window bounds, as every other path does.
    n_b = grid.n_bins
    frac = x * (1.0 / n_b)  # position inside the window, in bins: cheaper than an integer modulo
    np.floor(frac, out=frac)
    frac *= -n_b
    frac += x
    edge = np.flatnonzero((frac < 1) | (frac >= n_b - 1))
    if len(edge):
        win, _ = _windows(t[edge], grid)  # every such spike lies inside some window: keep is all true
        cells[edge] = win * grid.n_bins + _bins(t[edge], win, grid)
    return cells, keep


def _windows(t: np.ndarray, grid: WindowGrid) -> tuple[np.ndarray, np.ndarray | None]:
    """Window of each spike inside a window, by exact comparison with [start, end); and the mask of those."""
    win = np.searchsorted(grid.starts, t, side="right") - 1
    keep = win >= 0
    keep[keep] = t[keep] < grid.ends[win[keep]]
    if keep.all():
        return win, None
    return win[keep], keep


def _bins(t: np.ndarray, win: np.ndarray, grid: WindowGrid) -> np.ndarray:
    x = t - grid.starts[win]
    x *= 1.0 / grid.bin_s
    b = x.astype(np.int64)
    np.clip(b, 0, grid.n_bins - 1, out=b)  # float rounding at a window's last edge
    return b


def _store(dst: np.ndarray, counts: np.ndarray) -> int:
    """Write int64 counts into a uint16 view; clip (and count) only when some cell overflows."""
    if counts.size and counts.max() > UINT16_MAX:
        counts, over = to_uint16(counts)
        dst[...] = counts
        return over
    dst[...] = counts
    return 0


def _overlapping_members(
    times: np.ndarray, grid: WindowGrid, pieces: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(window id, spike index) for every (window, spike) membership, via range expansion per sorted piece."""
    if pieces is None:
        pieces = np.array([0, len(times)])
    starts, ends = grid.starts, grid.ends
    los, his = [], []
    for a, b in zip(pieces[:-1], pieces[1:], strict=True):
        if b > a:
            seg = times[a:b]
            los.append(np.searchsorted(seg, starts, side="left") + a)
            his.append(np.searchsorted(seg, ends, side="left") + a)
    if not los:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lo, hi = np.concatenate(los), np.concatenate(his)
    win_ids = np.tile(np.arange(len(starts)), len(los))
    lengths = hi - lo
    total = int(lengths.sum())
    first = np.cumsum(lengths) - lengths
    idx = np.arange(total) - np.repeat(first - lo, lengths)
    return np.repeat(win_ids, lengths), idx


def to_uint16(counts: np.ndarray) -> tuple[np.ndarray, int]:
    """Clip to uint16; returns the clipped array and how many cells were clipped (never silently wrapped)."""
    over = int(np.count_nonzero(counts > UINT16_MAX))
    if over:
        counts = np.minimum(counts, UINT16_MAX)
    return counts.astype(np.uint16), over


def reference_histogram(times: np.ndarray, clusters: np.ndarray, unit_ids: np.ndarray, edges: np.ndarray):
    """The per-unit ``np.histogram`` loop that public dataset builders use; the benchmark's reference."""
    out = np.empty((len(unit_ids), len(edges) - 1), dtype=np.int64)
    for i, u in enumerate(unit_ids):
        out[i], _ = np.histogram(times[clusters == u], edges)
    return out


def bin_timeseries(timestamps: np.ndarray, values: np.ndarray, grid: WindowGrid) -> np.ndarray:
    """Mean of each column of ``values`` [T, K] over the samples in each bin: ``[windows, bins, K]`` float32.

    Membership is ``bin_start <= t < bin_end`` (exact comparisons, as for spikes); NaN samples are ignored and a
    bin without a finite sample is NaN, so a gap in the recording never turns into a zero.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n_w, n_b, k = len(grid.starts), grid.n_bins, values.shape[1]
    if n_w == 0:
        return np.empty((0, n_b, k), dtype=np.float32)
    edges = grid.starts[:, None] + np.arange(n_b + 1) * grid.bin_s
    edges[:, -1] = grid.ends
    idx = np.searchsorted(timestamps, edges, side="left")  # [W, B+1]
    finite = np.isfinite(values)
    csum = np.concatenate([np.zeros((1, k)), np.cumsum(np.where(finite, values, 0.0), axis=0)])
    ccount = np.concatenate([np.zeros((1, k), dtype=np.int64), np.cumsum(finite, axis=0)])
    total = csum[idx[:, 1:]] - csum[idx[:, :-1]]
    count = ccount[idx[:, 1:]] - ccount[idx[:, :-1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean.astype(np.float32)
