"""Responses per stimulus presentation: each region read in its own response window and reduced at once.

Rows arrive in Arrow batches; per session, a plan (which units and bins make each region's window) is made from
its first row and every row is reduced to pooled features (mean over the window's bins, or every bin), or to the
output of a frozen encoder, or, when an encoder trains with the projector, kept whole (the selected units'
windows). Only these reductions are kept, never the rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from neurobridge.align.config import WINDOW_PRESETS, AlignDataConfig
from neurobridge.align.examples import AlignDataError, SessionInfo
from neurobridge.store.read import Source

# ---------------------------------------------------------------------------------------------------- windows


def region_windows(
    dataset: str, cfg: AlignDataConfig, regions: list[str], whole: tuple[float, float] | None = None
) -> dict[str, tuple[float, float]]:
    """region → window (ms) for the regions present; regions without a window are left out (or get the default).
    ``whole``: rows with a single bin (fMRI betas, pre-averaged responses) have no time axis, so that bin is every
    region's response and windows do not apply."""
    if whole is not None:
        return {r: whole for r in regions if cfg.regions is None or r in cfg.regions}
    table = cfg.windows if cfg.windows is not None else WINDOW_PRESETS.get(dataset)
    if table is None and cfg.default_window is None:
        raise AlignDataError(
            f"no response windows for dataset {dataset!r}: set data.windows (region → [start_ms, stop_ms]) or "
            f"data.default_window; presets exist for {sorted(WINDOW_PRESETS)}"
        )
    out = {}
    for r in regions:
        w = (table or {}).get(r, cfg.default_window)
        if w is not None and (cfg.regions is None or r in cfg.regions):
            out[r] = (float(w[0]), float(w[1]))
    return out


def window_bins(window: tuple[float, float], n_bins: int, bin_ms: float, pre_ms: float) -> np.ndarray:
    """Bins whose centre lies in [start, stop) ms after onset (rows start ``pre_ms`` before onset)."""
    centres = (np.arange(n_bins) + 0.5) * bin_ms - pre_ms
    return np.flatnonzero((centres >= window[0]) & (centres < window[1]))


# ---------------------------------------------------------------------------------------------------- features


def _values(column: pa.Array, rows: np.ndarray, length: int) -> np.ndarray:
    """[len(rows), length] from a list column, gathered by offsets (no Python loop over cells)."""
    flat = column.values.to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    idx = offsets[rows][:, None] + np.arange(length)[None, :]
    return flat[idx].astype(np.float32, copy=False)


@dataclass
class _SessionPlan:
    info: SessionInfo
    unit_ids: list[str]
    gather: list[tuple[np.ndarray, np.ndarray]]  # per region: (unit indices, bin indices)
    shape: tuple[int, int]
    unit_regions: np.ndarray  # every unit's region (the encoder pools region-pure tokens)
    windows: list[tuple[str, np.ndarray]]  # (region, bin indices) in feature order


class ResponseAccumulator:
    """Pooled features per presentation, per session (only pooled values are kept). In raw mode (an encoder
    trained with the projector) the selected units' whole windows are kept instead, ``[units × bins]`` flat."""

    def __init__(self, cfg: AlignDataConfig, encoder=None):
        self.cfg = cfg
        self.encoder = encoder  # EncoderFeatures or None
        self.raw = cfg.encoder is not None and cfg.encoder.trainable
        self.plans: dict[str, _SessionPlan | None] = {}
        self.x: dict[str, list[np.ndarray]] = defaultdict(list)
        self.stim: dict[str, list[np.ndarray]] = defaultdict(list)
        self.split: dict[str, list[np.ndarray]] = defaultdict(list)
        self.counts = {"rows": 0, "rows_without_stimulus": 0, "sessions_without_regions": []}

    def plan(self, src: Source, session: str, batch: pa.RecordBatch, row: int) -> _SessionPlan | None:
        key = f"{src.name}/{session}"
        if key in self.plans:
            return self.plans[key]
        ingest = src.ref.card.ingest
        bin_ms, pre_ms = float(ingest.bin_ms), float(ingest.window.pre_s) * 1000.0
        n_units, n_bins = int(batch.column("n_units")[row].as_py()), int(batch.column("n_bins")[row].as_py())
        units = np.array(batch.column("unit_ids")[row].as_py(), dtype=str)
        regions = np.array(batch.column("unit_regions")[row].as_py(), dtype=str)
        present = list(dict.fromkeys(regions.tolist()))
        whole = (-pre_ms, n_bins * bin_ms - pre_ms) if n_bins == 1 else None
        wins = region_windows(src.name, self.cfg, present, whole)
        gather, feat_regions, unit_sel, cells, by_region = [], [], [], 0, {}
        for r, w in wins.items():
            bins = window_bins(w, n_bins, bin_ms, pre_ms)
            if len(bins) == 0:
                lo, hi = -pre_ms, n_bins * bin_ms - pre_ms
                raise AlignDataError(
                    f"{key}: window {w} ms for {r} holds no bin of the rows ({lo:g}..{hi:g} ms, {bin_ms:g} ms bins)"
                )
            u = np.flatnonzero(regions == r)
            gather.append((u, bins))
            if self.raw:
                feat_regions.append(np.repeat(r, len(u) * n_bins))
            elif self.encoder is not None:
                feat_regions.append(np.repeat(r, self.encoder.dim))
            else:
                per_unit = 1 if self.cfg.pool == "mean" else len(bins)
                feat_regions.append(np.repeat(r, len(u) * per_unit))
            unit_sel.append(units[u])
            cells += len(u) * len(bins)
            by_region[r] = len(u) * len(bins)
        if not gather:
            self.counts["sessions_without_regions"].append(key)
            self.plans[key] = None
            return None
        unit_regions = np.concatenate([np.repeat(r, len(u)) for (u, _), r in zip(gather, wins, strict=True)])
        windows = [(r, bins) for (_, bins), r in zip(gather, wins, strict=True)]
        context = None
        if self.raw:
            context = {f: batch.column(f)[row].as_py() for f in ("session", "subject", "task", "dataset")}
            context["n_bins"] = n_bins
            context["is_counts"] = bool(batch.column("counts").is_valid().to_numpy(zero_copy_only=False)[row])
        info = SessionInfo(
            key,
            np.concatenate(unit_sel),
            np.concatenate(feat_regions),
            wins,
            cells,
            by_region,
            unit_regions,
            dict(windows),
            context,
        )
        plan = _SessionPlan(info, units.tolist(), gather, (n_units, n_bins), regions, windows)
        self.plans[key] = plan
        return plan

    def add(self, src: Source, batch: pa.RecordBatch) -> None:
        n = batch.num_rows
        self.counts["rows"] += n
        stim = batch.column("stimulus_id").to_numpy(zero_copy_only=False)
        has = np.array([s is not None for s in stim])
        self.counts["rows_without_stimulus"] += int((~has).sum())
        sessions = batch.column("session").to_numpy(zero_copy_only=False)
        splits = batch.column("split").to_numpy(zero_copy_only=False)
        counts_col, mua_col = batch.column("counts"), batch.column("mua")
        for session in np.unique(sessions[has]):
            rows = np.flatnonzero((sessions == session) & has)
            plan = self.plan(src, session, batch, int(rows[0]))
            if plan is None:
                continue
            key = plan.info.key
            U, B = plan.shape
            n_units = batch.column("n_units").to_numpy()[rows]
            if (n_units != U).any() or batch.column("unit_ids")[int(rows[0])].as_py() != plan.unit_ids:
                raise AlignDataError(f"{key}: rows of this session do not share one unit list ({U} units first)")
            is_counts = counts_col.is_valid().to_numpy(zero_copy_only=False)[rows]
            col = counts_col if is_counts.all() else mua_col
            if not is_counts.all() and is_counts.any():
                raise AlignDataError(f"{key}: session mixes counts and MUA rows")
            if self.raw:
                order = np.concatenate([u for u, _ in plan.gather])
                x = _values(col, rows, U * B).reshape(len(rows), U, B)[:, order].reshape(len(rows), -1)
            elif self.encoder is not None:
                x = self.encoder(_row_dicts(batch, rows), plan.unit_regions, plan.windows)
            else:
                grid = _values(col, rows, U * B).reshape(len(rows), U, B)
                feats = []
                for units, bins in plan.gather:
                    part = grid[:, units][:, :, bins]
                    feats.append(part.mean(axis=2) if self.cfg.pool == "mean" else part.reshape(len(rows), -1))
                x = np.concatenate(feats, axis=1)
                if is_counts.all() and self.cfg.transform != "none":
                    x = np.sqrt(x) if self.cfg.transform == "sqrt" else np.log1p(x)
            self.x[key].append(x.astype(np.float32))
            self.stim[key].append(stim[rows].astype(str))
            self.split[key].append(splits[rows].astype(str))


def _row_dicts(batch: pa.RecordBatch, rows: np.ndarray) -> list[dict]:
    from neurobridge.store.rows import table_rows

    return table_rows(pa.Table.from_batches([batch.take(pa.array(rows))]))
