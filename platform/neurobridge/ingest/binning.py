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
_BLOCK = 1 << 20


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

    def subset(self, lo: int, hi: int) -> WindowGrid:
        return WindowGrid(self.starts[lo:hi], self.n_bins, self.bin_s)


def bin_spikes(
    times: np.ndarray,
    units: np.ndarray,
    n_units: int,
    grid: WindowGrid,
    pieces: np.ndarray | None = None,
) -> np.ndarray:
    """Counts ``[n_windows, n_units, n_bins]`` (int64) of spikes ``(times, units)`` in ``grid``.

    ``pieces`` are offsets of runs of ``times`` that are each sorted (one per unit for NWB, one in all for
    ALF); they are needed only when windows overlap, where one spike may count in several windows.
    """
    n_w, n_b = len(grid.starts), grid.n_bins
    if n_w == 0 or len(times) == 0:
        return np.zeros((n_w, n_units, n_b), dtype=np.int64)
    if grid.overlapping:
        win, idx = _overlapping_members(times, grid, pieces)
        flat = _flat_index(times[idx], units[idx], win, grid, n_units)
    else:
        flat = np.empty(len(times), dtype=np.int64)
        n_in = 0
        for a in range(0, len(times), _BLOCK):  # blocks keep temporaries in cache; the work is vectorised
            t, u = times[a : a + _BLOCK], units[a : a + _BLOCK]
            win = np.searchsorted(grid.starts, t, side="right") - 1
            keep = win >= 0
            keep[keep] = t[keep] < grid.ends[win[keep]]
            if not keep.all():
                t, u, win = t[keep], u[keep], win[keep]
            flat[n_in : n_in + len(t)] = _flat_index(t, u, win, grid, n_units)
            n_in += len(t)
        flat = flat[:n_in]
    return np.bincount(flat, minlength=n_w * n_units * n_b).reshape(n_w, n_units, n_b)


def _flat_index(t: np.ndarray, u: np.ndarray, win: np.ndarray, grid: WindowGrid, n_units: int) -> np.ndarray:
    """Cell index ``(window * n_units + unit) * n_bins + bin`` of each spike."""
    x = t - grid.starts[win]
    x *= 1.0 / grid.bin_s
    b = x.astype(np.int64)
    np.clip(b, 0, grid.n_bins - 1, out=b)  # float rounding at a window's last edge
    flat = win * n_units
    flat += u
    flat *= grid.n_bins
    flat += b
    return flat


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
