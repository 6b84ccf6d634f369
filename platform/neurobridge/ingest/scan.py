"""Reading a session's spikes in bounded chunks, for the spike path of ingest.

Two passes over the spike arrays, each in blocks of at most ``chunk_spikes``: the first validates (finite,
non-negative, sorted per segment) and counts spikes per segment below each chunk edge; the second reads exactly
the spikes each chunk of windows needs. Memory is bounded by the chunk, not the session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurobridge.ingest.binning import WindowGrid
from neurobridge.sources import SourceError, SpikeSource

GROUP_WINDOWS = 32  # windows per planning group; chunks are runs of groups
CHUNK_CELLS = 8_000_000  # [windows × units × bins] cells binned at once
COALESCE_GAP = 1 << 16  # read neighbouring segment ranges in one request when the gap is this small


@dataclass
class SpikeChunk:
    """Spikes between two chunk edges: times, storage unit per spike, offsets of the time-sorted pieces, and each
    piece's unit when a piece holds one unit (NWB), else None."""

    times: np.ndarray
    units: np.ndarray
    pieces: np.ndarray | None
    piece_units: np.ndarray | None


def plan_groups(grid: WindowGrid) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """Groups of consecutive windows with the edge indices bounding their time span."""
    starts, ends = grid.starts, grid.ends
    if len(starts) == 0:
        return [], np.empty(0)
    bounds = list(range(0, len(starts), GROUP_WINDOWS)) + [len(starts)]
    spans = [(a, b, starts[a], ends[a:b].max()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    edges = np.unique(np.array([x for _, _, lo, hi in spans for x in (lo, hi)], dtype=np.float64))
    groups = [(a, b, int(np.searchsorted(edges, lo)), int(np.searchsorted(edges, hi))) for a, b, lo, hi in spans]
    return groups, edges


def scan(src: SpikeSource, edges: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate every spike time and count, per segment, the spikes below each edge: ``[segments, edges]``.

    A session that fits in one block is returned too, so that the second pass does not read it again.
    """
    segs = src.segments
    n_seg, n_edges = len(segs) - 1, len(edges)
    hist = np.zeros((n_seg, n_edges + 1), dtype=np.int64)
    prev_t, prev_seg = -np.inf, -1
    for a in range(0, src.n_spikes, block):
        b = min(a + block, src.n_spikes)
        t = src.read_times(a, b)
        s0 = int(np.searchsorted(segs, a, side="right") - 1)
        s1 = int(np.searchsorted(segs, b - 1, side="right") - 1)
        seg_ids = np.arange(s0, s1 + 1)
        lengths = np.minimum(segs[s0 + 1 : s1 + 2], b) - np.maximum(segs[s0 : s1 + 1], a)
        seg = np.repeat(seg_ids, lengths)
        _validate(src, t, seg, a, prev_t, prev_seg)
        prev_t, prev_seg = t[-1], seg[-1]
        bucket = np.searchsorted(edges, t, side="right")
        local = np.bincount((seg - s0) * (n_edges + 1) + bucket, minlength=len(seg_ids) * (n_edges + 1))
        hist[s0 : s1 + 1] += local.reshape(len(seg_ids), n_edges + 1)
    below = np.cumsum(hist, axis=1)[:, :n_edges]
    return below, (t if src.n_spikes <= block and src.n_spikes else None)


def _validate(src: SpikeSource, t: np.ndarray, seg: np.ndarray, offset: int, prev_t: float, prev_seg: int) -> None:
    bad = ~np.isfinite(t)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SourceError(f"{src.item}: spike time {offset + i}{_unit_of(src, seg[i])} is {t[i]} (not finite)")
    if t.min() < 0:
        i = int(np.argmin(t))
        raise SourceError(f"{src.item}: spike time {offset + i}{_unit_of(src, seg[i])} is negative ({t[i]})")
    back = np.flatnonzero((t[1:] < t[:-1]) & (seg[1:] == seg[:-1]))
    if len(back) or (seg[0] == prev_seg and t[0] < prev_t):
        i = int(back[0]) + 1 if len(back) else 0
        raise SourceError(
            f"{src.item}: spike times{_unit_of(src, seg[i])} are not sorted: "
            f"spike {offset + i} at {t[i]} s comes after {t[i - 1] if i else prev_t} s"
        )


def _unit_of(src: SpikeSource, segment: int) -> str:
    if src.segment_units is None:
        return ""
    if src.segment_units[segment] < 0:
        return f" of unit segment {segment} (a unit excluded by unit_filter)"
    return f" of unit {src.unit_ids[src.segment_units[segment]]}"


def merge_groups(groups, edges, below, max_spikes: int, cells_per_window: int):
    """Runs of groups whose spikes and cells fit one chunk: ``(w0, w1, edge_lo, edge_hi)``."""
    chunks, cur = [], None
    for a, b, e_lo, e_hi in groups:
        if cur is not None:
            hi = max(cur[3], e_hi)
            spikes = int((below[:, hi] - below[:, cur[2]]).sum())
            if spikes <= max_spikes and (b - cur[0]) * cells_per_window <= CHUNK_CELLS:
                cur = (cur[0], b, cur[2], hi)
                continue
            chunks.append(cur)
        cur = (a, b, e_lo, e_hi)
    if cur is not None:
        chunks.append(cur)
    return chunks


def read_chunk(src: SpikeSource, below: np.ndarray, edges: tuple[int, int], block: int, cached=None) -> SpikeChunk:
    """The spikes between edges ``edges = (lo, hi)`` (indices into the scan's edges)."""
    e_lo, e_hi = edges
    segs = src.segments
    lo = segs[:-1] + below[:, e_lo]
    hi = segs[:-1] + below[:, e_hi]
    nonempty = np.flatnonzero(hi > lo)
    if src.segment_units is not None:
        nonempty = nonempty[src.segment_units[nonempty] >= 0]  # segments of filtered-out units
    times, units, lengths = [], [], []
    i = 0
    while i < len(nonempty):  # coalesce neighbouring ranges into one read
        j = i
        while (
            j + 1 < len(nonempty)
            and lo[nonempty[j + 1]] - hi[nonempty[j]] <= COALESCE_GAP
            and hi[nonempty[j + 1]] - lo[nonempty[i]] <= 4 * block
        ):
            j += 1
        start, stop = int(lo[nonempty[i]]), int(hi[nonempty[j]])
        t_all = cached[start:stop] if cached is not None else src.read_times(start, stop)
        u_all = src.read_units(start, stop) if src.segment_units is None else None
        for s in nonempty[i : j + 1]:
            a, b = int(lo[s]) - start, int(hi[s]) - start
            times.append(t_all[a:b])
            units.append(u_all[a:b] if u_all is not None else np.full(b - a, src.segment_units[s]))
            lengths.append(b - a)
        i = j + 1
    if not times:
        return SpikeChunk(np.empty(0), np.empty(0, np.int64), None, None)
    t, u = np.concatenate(times), np.concatenate(units)
    pieces = np.concatenate([[0], np.cumsum(lengths)])
    if src.segment_units is not None:  # one unit per segment
        return SpikeChunk(t, u, pieces, src.segment_units[nonempty])
    if np.any(u < 0):  # spikes of excluded (e.g. not-good) units
        keep = u >= 0
        pieces = np.concatenate([[0], np.cumsum(np.add.reduceat(keep, pieces[:-1]))])
        t, u = t[keep], u[keep]
    return SpikeChunk(t, u, pieces, None)
