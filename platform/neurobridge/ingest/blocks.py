"""Binned sources (MUA, pre-binned counts, Pile shards) → rows: each window block the reader yields is ordered into
the token grid, given its splits and written as it comes, so memory is bounded by one block."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurobridge.catalog import CatalogEntry, SplitConfig
from neurobridge.config import Settings, fault_point
from neurobridge.ingest.binning import to_uint16
from neurobridge.ingest.rows import WindowBatch, rows_table, write_units
from neurobridge.sources import Item, SourceError
from neurobridge.sources.base import BinnedSource, SessionMeta, WindowBlock
from neurobridge.storage import filesystem, join, open_atomic, safe_name
from neurobridge.store.schema import SAMPLE_SCHEMA
from neurobridge.store.splits import assign_splits
from neurobridge.store.units import unit_vocab, units_table


@dataclass
class _Tally:
    """What an item's blocks added up to, for its record."""

    rows: int = 0
    tokens: int = 0
    spikes: int = 0
    clipped: int = 0
    sessions: dict[str, SessionMeta] = field(default_factory=dict)
    splits: Counter = field(default_factory=Counter)
    units: dict[str, pa.Table] = field(default_factory=dict)  # session → its units/ side table (counts and regions)

    def add(self, batch: WindowBatch) -> None:
        self.rows += len(batch.sample_ids)
        self.tokens += int(batch.values.size)
        self.sessions.setdefault(batch.meta.session, batch.meta)
        self.splits.update(np.asarray(batch.split).astype(str).tolist())

    def results(self, entry: CatalogEntry) -> dict:
        first = next(iter(self.sessions.values()), None)
        return {
            "rows": self.rows,
            "tokens": self.tokens,
            "spikes": self.spikes,
            "clipped": self.clipped,
            "units": sum(t.num_rows for t in self.units.values()),
            "session": first.session if first else None,
            "subject": first.subject if first else None,
            "species": first.species if first else entry.species,
            "task": first.task if first else entry.task,
            "sessions": sorted(self.sessions),
            "subjects": sorted({m.subject for m in self.sessions.values()}),
            "splits": dict(self.splits),
            "regions": dict(Counter(r for t in self.units.values() for r in t.column("region").to_pylist())),
        }


def _check_shape(src: BinnedSource, block: WindowBlock) -> None:
    w, u, _ = block.values.shape
    if len(block.unit_ids) != u or len(block.unit_regions) != u or len(block.names) != w:
        raise SourceError(
            f"{src.item}: a window block has {u} units, {len(block.unit_ids)} ids, "
            f"{len(block.unit_regions)} regions and {len(block.names)} names for {w} windows"
        )


def _grid_values(src: BinnedSource, block: WindowBlock, order: np.ndarray, tally: _Tally) -> np.ndarray:
    """The block's values in grid unit order: counts as uint16 (clipping counted), anything else as float32."""
    values = block.values[:, np.argsort(order), :]  # grid row → storage unit
    if values.dtype.kind not in "iub":
        return values.astype(np.float32, copy=False)
    if values.dtype.kind == "i" and values.size and values.min() < 0:
        raise SourceError(f"{src.item}: session {block.meta.session} has negative spike counts")
    values, clipped = to_uint16(values)
    tally.spikes += int(values.sum(dtype=np.int64))
    tally.clipped += clipped
    return values


def _split_keys(block: WindowBlock) -> np.ndarray:
    if block.split_key is not None:
        return np.asarray(block.split_key).astype(str)
    if block.stimulus_id is not None:
        return np.asarray(block.stimulus_id).astype(str)
    return np.char.add(f"{block.meta.session}/", np.asarray(block.names).astype(str))


def ingest_binned(src: BinnedSource, entry: CatalogEntry, item: Item, vdir: str, settings: Settings) -> dict:
    """Rows from a source that yields window blocks; several sessions per item are allowed (Pile shards)."""
    cfg = entry.ingest
    part = f"part-{item.key}.parquet"
    fs, path = filesystem(join(vdir, part), settings)
    tally = _Tally()
    with open_atomic(fs, path) as f, pq.ParquetWriter(f, SAMPLE_SCHEMA, compression="zstd") as writer:
        for block in src.blocks(cfg):
            _check_shape(src, block)
            if block.values.shape[0] == 0:
                continue
            vocab = unit_vocab(entry, block.meta.session, block.unit_ids, block.unit_regions)
            batch = WindowBatch(
                meta=block.meta,
                unit_ids=vocab.unit_ids,
                regions=vocab.regions,
                sample_ids=[f"{entry.name}/{item.key}/{name}" for name in block.names],
                split=assign_splits(block.split, _split_keys(block), cfg.split),
                t_start=block.t_start,
                bin_s=block.bin_s,
                values=_grid_values(src, block, vocab.order, tally),
                stimulus_id=block.stimulus_id,
                repeat=block.repeat,
                behavior=block.behavior,
                behavior_names=block.behavior_names,
            )
            writer.write_table(rows_table(entry.name, batch))
            fault_point(settings, "ingest.write", rel=item.rel, key=item.key)
            tally.add(batch)
            if block.meta.session not in tally.units:  # a session's blocks share its units: one table each
                tally.units[block.meta.session] = units_table(entry.name, block.meta.session, vocab, block.unit_ids)
    side = _write_side_outputs(src, vdir, item, settings, cfg.split)
    if "units" not in side and tally.units:
        side["units"] = write_units(pa.concat_tables(list(tally.units.values())), vdir, item.key, settings)
    return {**tally.results(entry), "part": part, "side_outputs": side, **src.stats()}


def _split_side_table(table: pa.Table, rule: SplitConfig) -> pa.Table:
    """Side tables split like the rows: official splits kept, val carved out of train by stimulus id."""
    if "split" not in table.column_names or "stimulus_id" not in table.column_names:
        return table
    official = table.column("split").to_numpy(zero_copy_only=False).astype(str)
    keys = table.column("stimulus_id").to_numpy(zero_copy_only=False).astype(str)
    split = pa.array(assign_splits(official, keys, rule), type=table.schema.field("split").type)
    return table.set_column(table.schema.get_field_index("split"), table.schema.field("split"), split)


def _write_side_outputs(src: BinnedSource, vdir: str, item: Item, settings: Settings, rule: SplitConfig) -> dict:
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
            writers[name].write_table(_split_side_table(table, rule))
            rows[name] += table.num_rows
    return rows
