"""Spike-time sources (NWB, ALF) → rows: window the session, bin each chunk of windows, write one Parquet part.

The part is committed (renamed, or its upload completed) only when every chunk is written, so a worker that dies
mid-item never leaves a part that looks complete; the ``units/`` side table follows the part.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings, fault_point
from neurobridge.ingest.behavior import BehaviorPlan, plan_behavior
from neurobridge.ingest.binning import bin_spikes
from neurobridge.ingest.rows import WindowBatch, rows_table, write_units
from neurobridge.ingest.scan import merge_groups, plan_groups, read_chunk, scan
from neurobridge.ingest.windows import SessionWindows, make_windows
from neurobridge.sources import Item, SpikeSource
from neurobridge.storage import filesystem, join, open_atomic
from neurobridge.store.schema import SAMPLE_SCHEMA
from neurobridge.store.units import UnitVocab, unit_vocab, units_table


def _counts(values) -> dict[str, int]:
    return {str(k): int(v) for k, v in zip(*np.unique(values, return_counts=True), strict=True)}


def _session_stats(src: SpikeSource, windows: SessionWindows, vocab: UnitVocab, behavior: BehaviorPlan) -> dict:
    stats = {
        "session": src.meta.session,
        "subject": src.meta.subject,
        "units": len(vocab.unit_ids),
        "dropped_windows": windows.dropped,
        "excluded_windows": windows.excluded,
        "species": src.meta.species,
        "task": src.meta.task,
        "splits": _counts(windows.split),
        "regions": _counts(vocab.regions),
    }
    if behavior.names:
        stats["behavior"] = behavior.names
    stats.update(getattr(src, "stats", None) or {})  # reader-specific counts, e.g. units removed by unit_filter
    return stats


def ingest_source(src: SpikeSource, entry: CatalogEntry, item: Item, vdir: str, settings: Settings) -> dict:
    """Rows of one spike-time session; returns the results that go into the item's record."""
    cfg = entry.ingest
    windows = make_windows(src, cfg)
    vocab = unit_vocab(entry, src.meta.session, src.unit_ids, src.unit_regions)
    behavior = plan_behavior(src, windows, cfg)
    stats = _session_stats(src, windows, vocab, behavior)
    groups, edges = plan_groups(windows.grid)
    below, cached = scan(src, edges, cfg.chunk_spikes)  # always: validation must not depend on windows
    if len(windows.grid.starts) == 0 or not vocab.unit_ids:
        return stats
    chunks = merge_groups(groups, edges, below, cfg.chunk_spikes, len(vocab.unit_ids) * windows.grid.n_bins)
    part = f"part-{item.key}.parquet"
    fs, path = filesystem(join(vdir, part), settings)
    totals = {"rows": 0, "tokens": 0, "spikes": 0, "clipped": 0}
    with open_atomic(fs, path) as f, pq.ParquetWriter(f, SAMPLE_SCHEMA, compression="zstd") as writer:
        for w0, w1, e_lo, e_hi in chunks:
            chunk = read_chunk(src, below, (e_lo, e_hi), cfg.chunk_spikes, cached)
            u = vocab.order[chunk.units] if len(chunk.units) else chunk.units
            piece_units = vocab.order[chunk.piece_units] if chunk.piece_units is not None else None
            grid = windows.grid.subset(w0, w1)
            c16, clipped = bin_spikes(chunk.times, u, len(vocab.unit_ids), grid, chunk.pieces, piece_units)
            batch = _window_batch(entry.name, item, src, vocab, windows, (w0, w1), c16)
            beh = behavior.values(w0, w1, grid)
            if beh is not None:
                batch.behavior, batch.behavior_names = beh, behavior.names
            writer.write_table(rows_table(entry.name, batch))
            fault_point(settings, "ingest.write", rel=item.rel, key=item.key)  # the part is not committed yet
            totals["rows"] += w1 - w0
            totals["tokens"] += int(c16.size)
            totals["spikes"] += int(c16.sum(dtype=np.int64))
            totals["clipped"] += clipped
    units_rows = write_units(
        units_table(entry.name, src.meta.session, vocab, src.unit_ids, src.heldout), vdir, item.key, settings
    )
    return {**stats, **totals, "part": part, "side_outputs": {"units": units_rows}}


def _window_batch(dataset: str, item: Item, src, vocab: UnitVocab, windows: SessionWindows, span, c16) -> WindowBatch:
    w0, w1 = span
    return WindowBatch(
        meta=src.meta,
        unit_ids=vocab.unit_ids,
        regions=vocab.regions,
        sample_ids=[f"{dataset}/{item.key}/{name}" for name in windows.names[w0:w1]],
        split=windows.split[w0:w1],
        t_start=windows.grid.starts[w0:w1],
        bin_s=windows.grid.bin_s,
        values=c16,
        stimulus_id=windows.stimulus_id[w0:w1] if windows.stimulus_id is not None else None,
        repeat=windows.repeat[w0:w1] if windows.repeat is not None else None,
    )
