"""Cutting a session into sample windows: aligned to intervals when the source has them, fixed chunks otherwise.

Windows of one session share one length so that each becomes a dense [units × bins] grid. Splits are
deterministic: the file's own split column when it has one, else a salted hash of the stimulus id (visual data:
one image never lands in two splits) or of the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurobridge.catalog import IngestConfig
from neurobridge.ingest.binning import WindowGrid
from neurobridge.sources.base import SourceError, SpikeSource
from neurobridge.store.splits import SPLITS, hash_split


@dataclass
class SessionWindows:
    grid: WindowGrid
    names: np.ndarray  # per window: "trials-00012", "chunk-000034"
    split: np.ndarray
    stimulus_id: np.ndarray | None
    repeat: np.ndarray | None
    dropped: int  # intervals without a usable alignment time
    excluded: int = 0  # intervals dropped by window.exclude (e.g. blank presentations)
    interval_index: np.ndarray | None = None  # per window: row of the aligned intervals table
    intervals: object = None  # the aligned Intervals table (for per-trial behaviour)


def make_windows(source: SpikeSource, cfg: IngestConfig) -> SessionWindows:
    w = cfg.window
    bin_s = cfg.bin_ms / 1000.0
    intervals = source.intervals(w.intervals) if w.mode != "chunks" else None
    if w.mode == "intervals" and intervals is None:
        names = getattr(source, "interval_names", lambda: [])()
        has = f" (this file has: {', '.join(names)})" if names else " (this file has no intervals tables)"
        raise SourceError(f"{source.item}: no intervals table {w.intervals!r} to align windows to{has}")
    if intervals is not None and len(intervals):
        return _aligned(source, intervals, cfg, bin_s)
    return _chunks(source, cfg, bin_s)


def _aligned(source: SpikeSource, intervals, cfg: IngestConfig, bin_s: float) -> SessionWindows:
    w = cfg.window
    cols = intervals.columns
    if w.align not in cols:
        raise SourceError(
            f"{source.item}: intervals {intervals.name!r} have no column {w.align!r} to align to "
            f"(columns: {', '.join(sorted(cols))})"
        )
    align = np.asarray(cols[w.align], dtype=np.float64)
    post = w.post_s
    if post is None:
        if "stop_time" not in cols:
            raise SourceError(f"{source.item}: window.post_s is unset and {intervals.name!r} has no stop_time")
        durations = np.asarray(cols["stop_time"], float) - align
        durations = durations[np.isfinite(durations) & (durations > 0)]
        if len(durations) == 0:
            raise SourceError(f"{source.item}: no interval in {intervals.name!r} has a positive duration")
        post = float(durations.min())
    n_bins = int(np.floor((w.pre_s + post) / bin_s + 1e-9))
    if n_bins < 1:
        raise SourceError(f"{source.item}: window of {w.pre_s + post:.4f} s is shorter than one {cfg.bin_ms} ms bin")
    index = np.arange(len(align))
    excluded = _excluded(source, intervals, w.exclude)
    ok = np.isfinite(align) & ~excluded
    starts = align[ok] - w.pre_s
    order = np.argsort(starts, kind="stable")
    kept = index[ok][order]
    names = np.array([f"{intervals.name}-{i:05d}" for i in kept])
    stim = rep = None
    if w.stimulus_column:
        if w.stimulus_column not in cols:
            raise SourceError(f"{source.item}: intervals {intervals.name!r} have no column {w.stimulus_column!r}")
        raw = np.asarray(cols[w.stimulus_column])[kept]
        stim = np.array([_stimulus_name(v, w.stimulus_prefix) for v in raw])
        rep = _repeat_index(stim)
    split = _splits(cols.get("split"), kept, stim, names, source.meta.session, cfg)
    dropped = int((~np.isfinite(align) & ~excluded).sum())
    grid = WindowGrid(starts[order], n_bins, bin_s)
    return SessionWindows(grid, names, split, stim, rep, dropped, int(excluded.sum()), kept, intervals)


def _excluded(source: SpikeSource, intervals, exclude: dict[str, list]) -> np.ndarray:
    """Intervals whose value in a column is one of the excluded values; numbers compare numerically."""
    mask = np.zeros(len(intervals), dtype=bool)
    for column, values in exclude.items():
        if column not in intervals.columns:
            raise SourceError(
                f"{source.item}: window.exclude names column {column!r}, which intervals {intervals.name!r} do "
                f"not have (columns: {', '.join(sorted(intervals.columns))})"
            )
        col = np.asarray(intervals.columns[column])
        if col.dtype.kind in "iufb":
            numbers = [float(v) for v in values if _is_number(v)]
            mask |= np.isin(col.astype(np.float64), numbers)
        else:  # text columns: exact text, and numerically where both sides are numbers ("-1.0" matches -1)
            text = col.astype(str)
            mask |= np.isin(text, [_as_text(v) for v in values])
            numbers = [float(v) for v in values if _is_number(v)]
            if numbers:
                parsed = np.array([float(t) if _is_number(t) else np.nan for t in text])
                mask |= np.isin(parsed, numbers)
    return mask


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _as_text(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _chunks(source: SpikeSource, cfg: IngestConfig, bin_s: float) -> SessionWindows:
    n_bins = int(np.floor(cfg.window.chunk_s / bin_s + 1e-9))
    if n_bins < 1:
        raise SourceError(f"{source.item}: chunk_s {cfg.window.chunk_s} is shorter than one bin")
    t_min, t_max = source.time_range()
    if not (np.isfinite(t_min) and np.isfinite(t_max)):
        raise SourceError(f"{source.item}: spike times are not finite (NaN or inf)")
    length = n_bins * bin_s
    first = np.floor(t_min / length) * length
    n = max(int(np.ceil((t_max - first) / length + 1e-12)), 0) if source.n_spikes else 0
    if n and first + n * length <= t_max:
        n += 1
    starts = first + np.arange(n) * length
    names = np.array([f"chunk-{i:06d}" for i in range(n)])
    split = _splits(None, np.arange(n), None, names, source.meta.session, cfg)
    return SessionWindows(WindowGrid(starts, n_bins, bin_s), names, split, None, None, 0)


def _stimulus_name(value, prefix: str | None) -> str:
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        text = f"frame_{int(value):03d}"
    else:
        text = str(value)
    return f"{prefix}/{text}" if prefix else text


def _repeat_index(stim: np.ndarray) -> np.ndarray:
    """0-based occurrence number of each stimulus within the session, in time order."""
    _, inverse = np.unique(stim, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    within = np.arange(len(stim)) - np.repeat(np.cumsum(counts) - counts, counts)
    out = np.empty(len(stim), dtype=np.int32)
    out[order] = within
    return out


def _splits(column, kept, stim, names, session: str, cfg: IngestConfig) -> np.ndarray:
    rule = cfg.split.rule
    if column is not None and rule in ("auto", "column"):
        values = np.char.lower(np.asarray(column).astype(str))[kept]
        distinct = set(np.unique(values)) & set(SPLITS)
        if rule == "column" or len(distinct) >= 2:
            return np.where(np.isin(values, SPLITS), values, "none")
    elif rule == "column":
        raise SourceError("split.rule is 'column' but the intervals table has no 'split' column")
    keys = stim if stim is not None else np.char.add(f"{session}/", names.astype(str))
    return hash_split(keys, cfg.split.val_fraction, cfg.split.test_fraction, cfg.split.salt)
