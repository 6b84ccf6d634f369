"""Ingest of one item: read → validate → bin → window → tokenize → write one Parquet part, streaming.

Two passes over the spike arrays, each in blocks of at most ``chunk_spikes``: the first validates (finite,
non-negative, sorted per segment) and counts spikes per segment below each chunk edge; the second reads exactly
the spikes each chunk of windows needs and writes its rows. Memory is bounded by the chunk, not the session.
"""

from __future__ import annotations

import time
import traceback

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..catalog import CatalogEntry
from ..config import Settings
from ..sources import Item, SourceError, SpikeSource, open_source
from ..storage import filesystem, join, open_atomic, write_json_atomic
from .binning import WindowGrid, bin_spikes
from .schema import SAMPLE_SCHEMA
from .tokenize import UnitVocab, unit_vocab
from .windows import SessionWindows, make_windows

GROUP_WINDOWS = 32  # windows per planning group; chunks are runs of groups
CHUNK_CELLS = 8_000_000  # [windows × units × bins] cells binned at once
COALESCE_GAP = 1 << 16  # read neighbouring segment ranges in one request when the gap is this small


def process_item(entry: CatalogEntry, item: Item, vdir: str, settings: Settings) -> dict:
    """Ingest one item and record its status; never raises for bad input (the record says why)."""
    t0 = time.perf_counter()
    rec = {
        "item": item.key, "uri": item.uri, "rel": item.rel, "status": "failed", "error": None,
        "session": None, "subject": None, "part": None, "rows": 0, "units": 0, "tokens": 0, "spikes": 0,
        "clipped": 0, "dropped_windows": 0, "checksum": item.fingerprint,
    }  # fmt: skip
    try:
        with open_source(entry, item, settings) as src:
            rec.update(ingest_source(src, entry, item, vdir, settings))
        rec["status"] = "ok"
    except SourceError as err:
        rec["error"] = str(err)
    except Exception as err:  # one bad item never kills the run; keep the reason and where it came from
        where = traceback.extract_tb(err.__traceback__)[-1]
        rec["error"] = f"{item.uri}: {type(err).__name__}: {err} (at {where.filename}:{where.lineno})"
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    fs, path = filesystem(join(vdir, "_items", f"{item.key}.json"), settings)
    write_json_atomic(fs, path, rec)
    return rec


def ingest_source(src: SpikeSource, entry: CatalogEntry, item: Item, vdir: str, settings: Settings) -> dict:
    cfg = entry.ingest
    windows = make_windows(src, cfg)
    vocab = unit_vocab(entry, src.meta.session, src.unit_ids, src.unit_regions)
    stats = {
        "session": src.meta.session, "subject": src.meta.subject, "units": len(vocab.unit_ids),
        "dropped_windows": windows.dropped, "species": src.meta.species, "task": src.meta.task,
        "splits": {str(k): int(v) for k, v in zip(*np.unique(windows.split, return_counts=True), strict=True)},
        "regions": {str(k): int(v) for k, v in zip(*np.unique(vocab.regions, return_counts=True), strict=True)},
    }  # fmt: skip
    groups, edges = _plan_groups(windows.grid)
    below, cached = scan(src, edges, cfg.chunk_spikes)  # always: validation must not depend on windows
    if len(windows.grid.starts) == 0 or not vocab.unit_ids:
        return stats
    chunks = _merge_groups(groups, edges, below, cfg.chunk_spikes, len(vocab.unit_ids) * windows.grid.n_bins)
    part = f"part-{item.key}.parquet"
    fs, path = filesystem(join(vdir, part), settings)
    totals = {"rows": 0, "tokens": 0, "spikes": 0, "clipped": 0}
    with open_atomic(fs, path) as f, pq.ParquetWriter(f, SAMPLE_SCHEMA, compression="zstd") as writer:
        for w0, w1, e_lo, e_hi in chunks:
            t, u, pieces, piece_units = _read_chunk(src, below, e_lo, e_hi, cfg.chunk_spikes, cached)
            u = vocab.order[u] if len(u) else u
            piece_units = vocab.order[piece_units] if piece_units is not None else None
            grid = windows.grid.subset(w0, w1)
            c16, clipped = bin_spikes(t, u, len(vocab.unit_ids), grid, pieces, piece_units)
            writer.write_table(_rows(entry, src, vocab, windows, w0, w1, c16, item))
            totals["rows"] += w1 - w0
            totals["tokens"] += int(c16.size)
            totals["spikes"] += int(c16.sum(dtype=np.int64))
            totals["clipped"] += clipped
    return {**stats, **totals, "part": part}


def _plan_groups(grid: WindowGrid) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
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
            f"{src.item}: spike times are not sorted{_unit_of(src, seg[i])}: "
            f"spike {offset + i} at {t[i]} s comes after {t[i - 1] if i else prev_t} s"
        )


def _unit_of(src: SpikeSource, segment: int) -> str:
    if src.segment_units is None:
        return ""
    return f" of unit {src.unit_ids[src.segment_units[segment]]}"


def _merge_groups(groups, edges, below, max_spikes: int, cells_per_window: int):
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


def _read_chunk(src: SpikeSource, below: np.ndarray, e_lo: int, e_hi: int, block: int, cached=None):
    """Spikes between two edges: times, storage unit index, offsets of the sorted pieces, and each piece's unit
    when a piece holds one unit (NWB)."""
    segs = src.segments
    lo = segs[:-1] + below[:, e_lo]
    hi = segs[:-1] + below[:, e_hi]
    nonempty = np.flatnonzero(hi > lo)
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
        return np.empty(0), np.empty(0, np.int64), None, None
    t, u = np.concatenate(times), np.concatenate(units)
    pieces = np.concatenate([[0], np.cumsum(lengths)])
    if src.segment_units is not None:  # one unit per segment
        return t, u, pieces, src.segment_units[nonempty]
    if np.any(u < 0):  # spikes of excluded (e.g. not-good) units
        keep = u >= 0
        pieces = np.concatenate([[0], np.cumsum(np.add.reduceat(keep, pieces[:-1]))])
        t, u = t[keep], u[keep]
    return t, u, pieces, None


def _rows(entry, src, vocab: UnitVocab, windows: SessionWindows, w0: int, w1: int, c16, item: Item) -> pa.Table:
    n = w1 - w0
    n_units, n_bins = c16.shape[1], c16.shape[2]
    meta = src.meta

    def const(value, type_=pa.string()):
        return pa.array([value] * n, type=type_)

    def lists(values: pa.Array, per_row: int) -> pa.Array:
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * per_row)
        return pa.ListArray.from_arrays(offsets, values)

    ids = pa.array(vocab.unit_ids)
    regions = pa.array(vocab.regions)
    names = windows.names[w0:w1]
    columns = {
        "dataset": const(entry.name),
        "session": const(meta.session),
        "subject": const(meta.subject),
        "species": const(meta.species),
        "task": const(meta.task),
        "sample_id": pa.array([f"{entry.name}/{item.key}/{name}" for name in names]),
        "split": pa.array(windows.split[w0:w1].astype(str)),
        "t_start": pa.array(windows.grid.starts[w0:w1]),
        "bin_ms": const(windows.grid.bin_s * 1000.0, pa.float32()),
        "n_units": const(n_units, pa.int32()),
        "n_bins": const(n_bins, pa.int32()),
        "counts": lists(pa.array(c16.reshape(-1)), n_units * n_bins),
        "mua": pa.nulls(n, pa.list_(pa.float32())),
        "unit_ids": lists(pa.concat_arrays([ids] * n), n_units),
        "unit_regions": lists(pa.concat_arrays([regions] * n), n_units),
        "stimulus_id": pa.array(windows.stimulus_id[w0:w1] if windows.stimulus_id is not None else [None] * n,
                                type=pa.string()),
        "repeat": pa.array(windows.repeat[w0:w1] if windows.repeat is not None else [None] * n, type=pa.int32()),
        "behavior": pa.nulls(n, pa.list_(pa.float32())),
        "behavior_names": pa.nulls(n, pa.list_(pa.string())),
    }  # fmt: skip
    return pa.table(columns, schema=SAMPLE_SCHEMA)
