"""Ingest of one item: read → validate → bin → window → tokenize → write one Parquet part, streaming.

Two passes over the spike arrays, each in blocks of at most ``chunk_spikes``: the first validates (finite,
non-negative, sorted per segment) and counts spikes per segment below each chunk edge; the second reads exactly
the spikes each chunk of windows needs and writes its rows. Memory is bounded by the chunk, not the session.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from contextlib import ExitStack

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurobridge import chaos
from neurobridge.catalog import CatalogEntry
from neurobridge.cluster import task_attempt
from neurobridge.config import Settings
from neurobridge.ingest.behavior import plan_behavior
from neurobridge.ingest.binning import WindowGrid, bin_spikes, to_uint16
from neurobridge.ingest.schema import SAMPLE_SCHEMA, UNITS_SCHEMA
from neurobridge.ingest.tokenize import UnitVocab, unit_vocab
from neurobridge.ingest.windows import SessionWindows, hash_split, make_windows
from neurobridge.sources import Item, SourceError, SpikeSource, open_source
from neurobridge.sources.base import BinnedSource, SessionMeta
from neurobridge.storage import filesystem, join, open_atomic, safe_name, write_json_atomic

GROUP_WINDOWS = 32  # windows per planning group; chunks are runs of groups
CHUNK_CELLS = 8_000_000  # [windows × units × bins] cells binned at once
COALESCE_GAP = 1 << 16  # read neighbouring segment ranges in one request when the gap is this small


def blank_record(item: Item) -> dict:
    """An item's status record before any work: failed, no rows (what stays if nothing else is learnt)."""
    rec = {
        "item": item.key,
        "uri": item.uri,
        "rel": item.rel,
        "status": "failed",
        "error": None,
        "session": None,
        "subject": None,
        "part": None,
        "rows": 0,
        "units": 0,
        "tokens": 0,
        "spikes": 0,
        "clipped": 0,
        "dropped_windows": 0,
        "checksum": item.fingerprint,
    }
    if item.extra.get("meta"):
        rec["meta"] = item.extra["meta"]  # listing metadata (e.g. the Allen session type), failed items too
    return rec


def write_record(rec: dict, vdir: str, settings: Settings) -> None:
    fs, path = filesystem(join(vdir, "_items", f"{rec['item']}.json"), settings)
    write_json_atomic(fs, path, rec)


def process_item(entry: CatalogEntry, item: Item, vdir: str, settings: Settings) -> dict:
    """Ingest one item and record its status; never raises for bad input (the record says why)."""
    t0, c0 = time.perf_counter(), time.process_time()
    rec = blank_record(item)
    rec["attempt"] = task_attempt() + 1  # > 1: Ray retried the item after its worker process died
    chaos.maybe_kill(settings.chaos, item.rel, item.key, "start")
    try:
        with open_source(entry, item, settings) as src:
            ingest = ingest_binned if isinstance(src, BinnedSource) else ingest_source
            rec.update(ingest(src, entry, item, vdir, settings))
        rec["status"] = "ok"
    except SourceError as err:
        rec["error"] = str(err)
    except Exception as err:  # one bad item never kills the run; keep the reason and where it came from
        where = traceback.extract_tb(err.__traceback__)[-1]
        rec["error"] = f"{item.uri}: {type(err).__name__}: {err} (at {where.filename}:{where.lineno})"
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    rec["cpu_seconds"] = round(time.process_time() - c0, 4)  # this process's CPU: the cost, whatever the load
    write_record(rec, vdir, settings)
    return rec


def ingest_source(src: SpikeSource, entry: CatalogEntry, item: Item, vdir: str, settings: Settings) -> dict:
    cfg = entry.ingest
    windows = make_windows(src, cfg)
    vocab = unit_vocab(entry, src.meta.session, src.unit_ids, src.unit_regions)
    stats = {
        "session": src.meta.session,
        "subject": src.meta.subject,
        "units": len(vocab.unit_ids),
        "dropped_windows": windows.dropped,
        "species": src.meta.species,
        "task": src.meta.task,
        "splits": {str(k): int(v) for k, v in zip(*np.unique(windows.split, return_counts=True), strict=True)},
        "regions": {str(k): int(v) for k, v in zip(*np.unique(vocab.regions, return_counts=True), strict=True)},
    }
    behavior = plan_behavior(src, windows, cfg)
    if behavior.names:
        stats["behavior"] = behavior.names
    stats["excluded_windows"] = windows.excluded
    stats.update(getattr(src, "stats", None) or {})  # reader-specific counts, e.g. units removed by unit_filter
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
            beh = behavior.values(w0, w1, grid)
            beh = (beh, behavior.names) if beh is not None else None
            writer.write_table(_rows(entry, src, vocab, windows, w0, w1, c16, item, beh))
            chaos.maybe_kill(settings.chaos, item.rel, item.key, "write")  # the part is not committed yet
            totals["rows"] += w1 - w0
            totals["tokens"] += int(c16.size)
            totals["spikes"] += int(c16.sum(dtype=np.int64))
            totals["clipped"] += clipped
    units_rows = _write_units(entry, src, vocab, vdir, item, settings)
    return {**stats, **totals, "part": part, "side_outputs": {"units": units_rows}}


def _write_units(entry, src: SpikeSource, vocab: UnitVocab, vdir: str, item: Item, settings: Settings) -> int:
    grid_to_storage = np.argsort(vocab.order)
    heldout = src.heldout[grid_to_storage] if src.heldout is not None else None
    n = len(vocab.unit_ids)
    table = pa.table(
        {
            "dataset": pa.array([entry.name] * n, pa.string()),
            "session": pa.array([src.meta.session] * n, pa.string()),
            "unit_id": pa.array(vocab.unit_ids, pa.string()),
            "raw_id": pa.array(np.asarray(src.unit_ids)[grid_to_storage].astype(str).tolist(), pa.string()),
            "index": pa.array(np.arange(n, dtype=np.int32)),
            "region": pa.array(vocab.regions, pa.string()),
            "heldout": pa.array(heldout.tolist() if heldout is not None else [None] * n, pa.bool_()),
        },
        schema=UNITS_SCHEMA,
    )
    fs, path = filesystem(join(vdir, "units", f"part-{item.key}.parquet"), settings)
    with open_atomic(fs, path) as f:
        pq.write_table(table, f, compression="zstd")
    return n


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
    if src.segment_units[segment] < 0:
        return f" of unit segment {segment} (a unit excluded by unit_filter)"
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


def rows_table(
    entry: CatalogEntry,
    meta: SessionMeta,
    unit_ids: list[str],
    regions: list[str],
    sample_ids: list[str],
    split: np.ndarray,
    t_start: np.ndarray,
    bin_s: float,
    values: np.ndarray,
    stimulus_id: np.ndarray | None = None,
    repeat: np.ndarray | None = None,
    behavior: np.ndarray | None = None,
    behavior_names: list[str] | None = None,
) -> pa.Table:
    """Rows in the sample schema from ``values`` [W, U, B]: uint16 counts, or floats written as ``mua``."""
    n, n_units, n_bins = values.shape

    def const(value, type_=pa.string()):
        return pa.array([value] * n, type=type_)

    def lists(flat: pa.Array, per_row: int) -> pa.Array:
        offsets = pa.array(np.arange(n + 1, dtype=np.int64) * per_row, type=pa.int32())
        return pa.ListArray.from_arrays(offsets, flat)

    is_mua = values.dtype.kind == "f"
    cells = lists(pa.array(values.reshape(-1)), n_units * n_bins)
    if behavior is not None:
        k = behavior.shape[2]
        beh = lists(pa.array(np.ascontiguousarray(behavior, dtype=np.float32).reshape(-1)), n_bins * k)
        beh_names = lists(pa.array(list(behavior_names) * n, type=pa.string()), k)
    else:
        beh = pa.nulls(n, pa.list_(pa.float32()))
        beh_names = pa.nulls(n, pa.list_(pa.string()))
    columns = {
        "dataset": const(entry.name),
        "session": const(meta.session),
        "subject": const(meta.subject),
        "species": const(meta.species),
        "task": const(meta.task),
        "sample_id": pa.array(sample_ids, type=pa.string()),
        "split": pa.array(np.asarray(split).astype(str)),
        "t_start": pa.array(np.asarray(t_start, dtype=np.float64)),
        "bin_ms": const(bin_s * 1000.0, pa.float32()),
        "n_units": const(n_units, pa.int32()),
        "n_bins": const(n_bins, pa.int32()),
        "counts": pa.nulls(n, pa.list_(pa.uint16())) if is_mua else cells,
        "mua": cells.cast(pa.list_(pa.float32())) if is_mua else pa.nulls(n, pa.list_(pa.float32())),
        "unit_ids": lists(pa.concat_arrays([pa.array(unit_ids, type=pa.string())] * n), n_units),
        "unit_regions": lists(pa.concat_arrays([pa.array(regions, type=pa.string())] * n), n_units),
        "stimulus_id": pa.array(stimulus_id if stimulus_id is not None else [None] * n, type=pa.string()),
        "repeat": pa.array(repeat if repeat is not None else [None] * n, type=pa.int32()),
        "behavior": beh,
        "behavior_names": beh_names,
    }
    return pa.table(columns, schema=SAMPLE_SCHEMA)


def _rows(entry, src, vocab: UnitVocab, windows: SessionWindows, w0: int, w1: int, c16, item: Item, beh=None):
    names = windows.names[w0:w1]
    return rows_table(
        entry,
        src.meta,
        vocab.unit_ids,
        vocab.regions,
        [f"{entry.name}/{item.key}/{name}" for name in names],
        windows.split[w0:w1],
        windows.grid.starts[w0:w1],
        windows.grid.bin_s,
        c16,
        windows.stimulus_id[w0:w1] if windows.stimulus_id is not None else None,
        windows.repeat[w0:w1] if windows.repeat is not None else None,
        beh[0] if beh is not None else None,
        beh[1] if beh is not None else None,
    )


def ingest_binned(src: BinnedSource, entry: CatalogEntry, item: Item, vdir: str, settings: Settings) -> dict:
    """Rows from a source that yields window blocks; several sessions per item are allowed (Pile shards)."""
    cfg = entry.ingest
    part = f"part-{item.key}.parquet"
    fs, path = filesystem(join(vdir, part), settings)
    totals = {"rows": 0, "tokens": 0, "spikes": 0, "clipped": 0, "units": 0}
    sessions: dict[str, SessionMeta] = {}
    splits: Counter = Counter()
    regions: Counter = Counter()
    units_seen: set[str] = set()
    with open_atomic(fs, path) as f, pq.ParquetWriter(f, SAMPLE_SCHEMA, compression="zstd") as writer:
        for block in src.blocks(cfg):
            w, u, b = block.values.shape
            if len(block.unit_ids) != u or len(block.unit_regions) != u or len(block.names) != w:
                raise SourceError(
                    f"{src.item}: a window block has {u} units, {len(block.unit_ids)} ids, "
                    f"{len(block.unit_regions)} regions and {len(block.names)} names for {w} windows"
                )
            if w == 0:
                continue
            vocab = unit_vocab(entry, block.meta.session, block.unit_ids, block.unit_regions)
            grid_order = np.argsort(vocab.order)  # grid row → storage unit
            values = block.values[:, grid_order, :]
            if values.dtype.kind in "iub":
                if values.dtype.kind == "i" and values.size and values.min() < 0:
                    raise SourceError(f"{src.item}: session {block.meta.session} has negative spike counts")
                values, clipped = to_uint16(values)
                totals["spikes"] += int(values.sum(dtype=np.int64))
                totals["clipped"] += clipped
            else:
                values = values.astype(np.float32, copy=False)
            split = block.split
            if split is None:
                keys = (
                    block.stimulus_id
                    if block.stimulus_id is not None
                    else np.char.add(f"{block.meta.session}/", np.asarray(block.names).astype(str))
                )
                split = hash_split(keys, cfg.split.val_fraction, cfg.split.test_fraction, cfg.split.salt)
            sample_ids = [f"{entry.name}/{item.key}/{name}" for name in block.names]
            writer.write_table(
                rows_table(
                    entry,
                    block.meta,
                    vocab.unit_ids,
                    vocab.regions,
                    sample_ids,
                    split,
                    block.t_start,
                    block.bin_s,
                    values,
                    block.stimulus_id,
                    block.repeat,
                    block.behavior,
                    block.behavior_names,
                )
            )
            chaos.maybe_kill(settings.chaos, item.rel, item.key, "write")
            totals["rows"] += w
            totals["tokens"] += int(values.size)
            sessions.setdefault(block.meta.session, block.meta)
            splits.update(np.asarray(split).astype(str).tolist())
            for uid, region in zip(vocab.unit_ids, vocab.regions, strict=True):
                if uid not in units_seen:
                    units_seen.add(uid)
                    regions[region] += 1
    totals["units"] = len(units_seen)
    side = _write_side_outputs(src, vdir, item, settings)
    first = next(iter(sessions.values()), None)
    return {
        **totals,
        "part": part,
        "session": first.session if first else None,
        "subject": first.subject if first else None,
        "species": first.species if first else entry.species,
        "task": first.task if first else entry.task,
        "sessions": sorted(sessions),
        "subjects": sorted({m.subject for m in sessions.values()}),
        "splits": dict(splits),
        "regions": dict(regions),
        "side_outputs": side,
        **src.stats(),
    }


def _write_side_outputs(src: BinnedSource, vdir: str, item: Item, settings: Settings) -> dict[str, int]:
    """Each side table name → ``<vdir>/<name>/part-<item>.parquet``, committed atomically; returns rows per name."""
    rows: dict[str, int] = {}
    with ExitStack() as stack:
        writers: dict[str, pq.ParquetWriter] = {}
        for name, table in src.side_outputs():
            if name not in writers:
                fs, path = filesystem(join(vdir, safe_name(name), f"part-{item.key}.parquet"), settings)
                f = stack.enter_context(open_atomic(fs, path))
                writers[name] = stack.enter_context(pq.ParquetWriter(f, table.schema, compression="zstd"))
                rows[name] = 0
            writers[name].write_table(table)
            rows[name] += table.num_rows
    return rows
