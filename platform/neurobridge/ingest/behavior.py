"""Behaviour beside the neural rows: continuous series binned like the spikes, per-trial values broadcast.

The layout is the store's: ``behavior`` is ``[n_bins × n_behavior]`` per row, named by ``behavior_names``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurobridge.catalog import IngestConfig
from neurobridge.ingest.binning import WindowGrid, bin_timeseries
from neurobridge.ingest.windows import SessionWindows
from neurobridge.sources.base import SourceError, SpikeSource, TimeSeries


@dataclass
class BehaviorPlan:
    series: list[TimeSeries]
    trial_columns: dict[str, np.ndarray]  # name → value per window (already indexed by window)
    names: list[str]

    def values(self, w0: int, w1: int, grid: WindowGrid) -> np.ndarray | None:
        """``[windows, bins, K]`` for windows ``w0:w1`` (``grid`` is their sub-grid)."""
        if not self.names:
            return None
        parts = []
        lo, hi = (grid.starts[0], grid.ends.max()) if len(grid.starts) else (0.0, 0.0)
        for ts in self.series:
            a, b = np.searchsorted(ts.timestamps, [lo, hi], side="left")
            data = np.asarray(ts.data[a:b], dtype=np.float64)
            parts.append(bin_timeseries(ts.timestamps[a:b], data, grid))
        for values in self.trial_columns.values():
            v = values[w0:w1].astype(np.float32)
            parts.append(np.repeat(v[:, None, None], grid.n_bins, axis=1))
        return np.concatenate(parts, axis=2)


def plan_behavior(src: SpikeSource, windows: SessionWindows, cfg: IngestConfig) -> BehaviorPlan:
    available = {ts.name: ts for ts in src.behavior_series()}
    if cfg.behavior is None:
        chosen = list(available.values())
    else:
        missing = [n for n in cfg.behavior if n not in available]
        if missing:
            raise SourceError(
                f"{src.item}: behaviour series {missing} not found (the session has: {sorted(available) or 'none'})"
            )
        chosen = [available[n] for n in cfg.behavior]
    for ts in chosen:
        t = ts.timestamps
        if len(t) != len(ts.data):
            raise SourceError(f"{src.item}: behaviour {ts.name!r} has {len(t)} timestamps for {len(ts.data)} samples")
        if len(t) > 1 and np.any(np.diff(t) < 0):
            raise SourceError(f"{src.item}: behaviour {ts.name!r} timestamps are not sorted")
    trial: dict[str, np.ndarray] = {}
    if windows.intervals is not None and windows.interval_index is not None:
        cols = windows.intervals.columns
        for name in cfg.trial_behavior:
            if name in cols and np.asarray(cols[name]).dtype.kind in "biuf":
                trial[name] = np.asarray(cols[name], dtype=np.float64)[windows.interval_index]
    names = [n for ts in chosen for n in ts.names()] + [f"trial.{n}" for n in trial]
    return BehaviorPlan(chosen, trial, names)
