"""Neural Pile shards: Parquet rows of ``spike_counts`` [units × 20 ms bins] re-windowed into fixed chunks.

A row can hold ~10M cells, so a shard is read one row at a time (``iter_batches(batch_size=1)``); the row's
nested list becomes a ``[U, T]`` NumPy view of Arrow's child buffer (zero copy), and windows are cut from that
view in blocks of at most ``pile.block_cells`` cells. Per worker the reader holds one decoded row plus one block.

Choices (see the catalog's ``PileConfig``):

* ``bin_ms`` must be a whole multiple ``k`` of the native 20 ms; ``k > 1`` sums ``k`` native bins exactly.
* Tail bins that do not fill a window are dropped and counted (``tail_bins_dropped`` in the item record): padding
  would invent zeros that a Poisson loss reads as silence.
* A session is ``source_dataset/subject/session/segment`` (each part URL-quoted, so ids containing ``/`` cannot
  collide); a segment's windows never share its session name with another segment, whose unit set may differ.
* Split: the shard name says train or test (the publisher's split). Val is carved out of train by a salted hash
  of the whole segment (or the whole session, ``val_unit: session``), never of single windows: adjacent windows
  of a segment are correlated, so a per-window hash would put near-copies of a val window into train.
* A bad row (ragged units, nulls, negative counts, null ids) fails its shard by default, since it means a corrupt
  or changed shard; ``on_bad_row: skip`` drops it and counts it. Schema problems (missing column, float counts)
  concern every row and always fail the shard.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import NamedTuple
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurobridge.catalog import CatalogEntry, IngestConfig, PileConfig, PileEntry
from neurobridge.config import Settings
from neurobridge.sources.base import (
    BinnedSource,
    Item,
    SessionMeta,
    SourceError,
    WindowBlock,
    glob_under,
    make_items,
    register,
)
from neurobridge.storage import filesystem, is_local_fs

NATIVE_BIN_MS = 20.0
ID_COLUMNS = ("subject_id", "session_id", "segment_id")
COUNTS = "spike_counts"
MAX_REPORTED_BAD_ROWS = 20
_SPLIT_RE = re.compile(r"(?:^|[/_.-])(train|test|val|validation)(?=[/_.-]|$)", re.IGNORECASE)


def rebin_factor(bin_ms: float, where: str) -> int:
    """How many native 20 ms bins make one output bin; anything but a whole multiple is refused."""
    k = bin_ms / NATIVE_BIN_MS
    if k < 1 - 1e-9 or abs(k - round(k)) > 1e-9:
        raise SourceError(
            f"{where}: ingest.bin_ms is {bin_ms:g} but Neural Pile counts are binned at {NATIVE_BIN_MS:g} ms; use "
            f"{NATIVE_BIN_MS:g} or a whole multiple of it (bins are summed exactly; finer bins cannot be recovered)"
        )
    return int(round(k))


def window_bins(cfg: IngestConfig, where: str) -> int:
    n = int(np.floor(cfg.window.chunk_s * 1000.0 / cfg.bin_ms + 1e-9))
    if n < 1:
        raise SourceError(f"{where}: window.chunk_s {cfg.window.chunk_s:g} is shorter than one {cfg.bin_ms:g} ms bin")
    return n


def shard_split(rel: str) -> str | None:
    """The publisher's split from a shard path (``data/train-00003-of-00012.parquet`` → train)."""
    found = _SPLIT_RE.findall(rel)
    if not found:
        return None
    name = found[-1].lower()
    return "val" if name == "validation" else name


def shard_fingerprint(info: dict) -> str:
    """Size plus the strongest content tag the listing gives: S3 ETag, Hugging Face LFS sha256 / git blob id,
    or a local mtime."""
    lfs = info.get("lfs") or {}
    tag = (
        info.get("ETag")
        or info.get("etag")
        or (lfs.get("sha256") if isinstance(lfs, dict) else None)
        or info.get("blob_id")
        or info.get("mtime")
        or info.get("LastModified")
        or ""
    )
    return f"{info.get('size', '')}:{str(tag).strip(chr(34))}"


def _filesystem(uri: str, settings: Settings):
    try:
        return filesystem(uri, settings)
    except ImportError as err:
        raise SourceError(
            f"{uri}: cannot open this URI ({err}); hf:// needs huggingface_hub (pip install 'neurobridge[pile]')"
        ) from None


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    rebin_factor(entry.ingest.bin_ms, f"catalog entry {entry.name!r}")  # a config error stops before any work
    window_bins(entry.ingest, f"catalog entry {entry.name!r}")
    root = entry.resolved_uri(settings)
    fs, path = _filesystem(root, settings)
    if path.endswith(".parquet") and fs.isfile(path):
        files, base = [path], posixpath.dirname(path)
    else:
        files = glob_under(fs, root, path, entry.selection.include or ["**/*.parquet"], ".parquet")
        base = path
    items = make_items(fs, root, base, files, entry.selection.exclude, entry.selection.limit)
    for it in items:
        it.fingerprint = shard_fingerprint(fs.info(it.uri.split("://", 1)[1] if "://" in root else it.uri))
        it.extra["split"] = shard_split(it.rel)
    return items


def open_item(entry: CatalogEntry, item: Item, settings: Settings) -> PileSource:
    return PileSource(item.uri, entry, settings, split=item.extra.get("split", shard_split(item.rel)))


def window_blocks(counts: np.ndarray, n_bins: int, k: int, max_cells: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first window, values [w, U, n_bins])`` for consecutive windows of a ``[U, T]`` row, each block at most
    ``max_cells`` cells (one window when a single window is larger). Output bins sum ``k`` native bins; the
    ``T mod (n_bins·k)`` tail bins are not used."""
    n_units, n_native = counts.shape
    span = n_bins * k
    n_windows = n_native // span
    if n_windows == 0 or n_units == 0:
        return
    per_block = max(1, max_cells // (n_units * n_bins))
    acc = np.uint32 if counts.dtype.kind == "u" and counts.dtype.itemsize <= 2 else np.int64
    for w0 in range(0, n_windows, per_block):
        w1 = min(n_windows, w0 + per_block)
        piece = counts[:, w0 * span : w1 * span]  # a view: no copy until the block itself
        if k == 1:
            block = np.ascontiguousarray(piece.reshape(n_units, w1 - w0, n_bins).transpose(1, 0, 2))
        else:
            summed = piece.reshape(n_units, w1 - w0, n_bins, k).sum(axis=3, dtype=acc)
            block = np.ascontiguousarray(summed.transpose(1, 0, 2))
        yield w0, block


def counts_matrix(column: pa.Array, where: str) -> np.ndarray:
    """One row's ``list<list<int>>`` as a ``[U, T]`` view of the Arrow child buffer; raises on ragged units,
    nulls and negative counts."""
    if column.null_count:
        raise SourceError(f"{where}: spike_counts is null")
    units = column.flatten()
    if units.null_count:
        raise SourceError(f"{where}: unit {int(np.flatnonzero(units.is_null().to_numpy(False))[0])} is null")
    lengths = np.diff(units.offsets.to_numpy())
    n_units = len(units)
    if n_units and np.any(lengths != lengths[0]):
        bad = int(np.flatnonzero(lengths != lengths[0])[0])
        raise SourceError(
            f"{where}: ragged spike_counts: unit {bad} has {int(lengths[bad])} bins but unit 0 has "
            f"{int(lengths[0])} (every unit of a row must have the same number of bins)"
        )
    values = units.flatten()
    if values.null_count:
        flat = int(np.flatnonzero(values.is_null().to_numpy(False))[0])
        raise SourceError(
            f"{where}: spike count of unit {flat // int(lengths[0])} bin {flat % int(lengths[0])} is null"
        )
    n_bins = int(lengths[0]) if n_units else 0
    arr = values.to_numpy(zero_copy_only=True).reshape(n_units, n_bins)
    if arr.dtype.kind == "i" and arr.size:
        low = int(np.argmin(arr))
        if arr.flat[low] < 0:
            u, b = divmod(low, n_bins)
            raise SourceError(f"{where}: negative spike count {int(arr.flat[low])} at unit {u}, bin {b}")
    return arr


def check_schema(schema: pa.Schema, n_rows: int, where: str) -> None:
    """Problems that concern every row of the shard: missing columns and non-integer counts."""
    missing = [c for c in (COUNTS, *ID_COLUMNS) if c not in schema.names]
    if missing:
        raise SourceError(
            f"{where}: rows 0..{n_rows - 1}: missing column(s) {', '.join(missing)} (a Neural Pile shard has "
            f"{COUNTS}, {', '.join(ID_COLUMNS)} and optionally source_dataset; found {', '.join(schema.names)})"
        )
    t = schema.field(COUNTS).type
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
    inner = t.value_type if is_list else None
    leaf = (
        inner.value_type if inner is not None and (pa.types.is_list(inner) or pa.types.is_large_list(inner)) else None
    )
    if leaf is None or not pa.types.is_integer(leaf):
        raise SourceError(
            f"{where}: rows 0..{n_rows - 1}: {COUNTS} has type {t}; expected list<list<integer>> spike counts "
            "[units][bins] (e.g. uint8)"
        )


class WindowGrid(NamedTuple):
    """The windows cut from every row: ``n_bins`` output bins of ``bin_s`` seconds, each ``k`` native bins."""

    n_bins: int
    k: int
    bin_s: float


class PileSource(BinnedSource):
    def __init__(self, uri: str, entry: CatalogEntry, settings: Settings, split: str | None = None):
        self.item = uri
        self.entry = entry
        self.opts = entry.pile or PileConfig()
        self.shard_split = split
        self._stats = {
            "rows_read": 0,
            "rows_skipped": 0,
            "bad_rows": [],
            "windows": 0,
            "tail_bins_dropped": 0,
            "tail_cells_dropped": 0,
            "rows_without_windows": 0,
        }
        fs, path = _filesystem(uri, settings)
        self._fh = None
        try:
            source = path if is_local_fs(fs) else fs.open(path, "rb", block_size=8 << 20, cache_type="readahead")
            self._fh = None if is_local_fs(fs) else source
            self._pf = pq.ParquetFile(source, buffer_size=8 << 20, pre_buffer=False)
        except FileNotFoundError:
            raise SourceError(f"{uri}: file not found") from None
        except (OSError, pa.ArrowInvalid) as err:
            self.close()
            raise SourceError(f"{uri}: not a readable Parquet file (truncated or corrupt?): {err}") from None
        schema = self._pf.schema_arrow
        try:
            check_schema(schema, self._pf.metadata.num_rows, uri)
        except SourceError:
            self.close()
            raise
        self._columns = [COUNTS, *ID_COLUMNS] + (["source_dataset"] if "source_dataset" in schema.names else [])

    def blocks(self, cfg: IngestConfig) -> Iterator[WindowBlock]:
        k = rebin_factor(cfg.bin_ms, self.item)
        grid = WindowGrid(n_bins=window_bins(cfg, self.item), k=k, bin_s=cfg.bin_ms / 1000.0)
        batches = self._pf.iter_batches(batch_size=1, columns=self._columns, use_threads=False)
        for row, batch in enumerate(batches):
            self._stats["rows_read"] += 1
            where = f"{self.item}: row {row}"
            try:
                meta, key = self._meta(batch, where)
                counts = counts_matrix(batch.column(COUNTS), where)
            except SourceError as err:
                if self.opts.on_bad_row == "fail":
                    raise
                self._stats["rows_skipped"] += 1
                if len(self._stats["bad_rows"]) < MAX_REPORTED_BAD_ROWS:
                    self._stats["bad_rows"].append(str(err))
                continue
            yield from self._row_blocks(counts, meta, key, row, grid)
            del counts, batch  # the row's buffers go before the next row is decoded

    def _row_blocks(self, counts, meta: SessionMeta, key: str, row: int, grid: WindowGrid) -> Iterator[WindowBlock]:
        """One row's whole windows (the tail that does not fill a window is dropped and counted)."""
        n_bins, k, bin_s = grid
        n_units, n_native = counts.shape
        span = n_bins * k
        n_windows = n_native // span if n_units else 0
        tail = n_native - n_windows * span
        self._stats["tail_bins_dropped"] += tail
        self._stats["tail_cells_dropped"] += tail * n_units
        self._stats["windows"] += n_windows
        self._stats["rows_without_windows"] += int(n_windows == 0)
        unit_ids = np.arange(n_units).astype(str)
        regions = np.full(n_units, "unknown")
        for w0, values in window_blocks(counts, n_bins, k, self.opts.block_cells):
            w = np.arange(w0, w0 + len(values))
            yield WindowBlock(
                meta=meta,
                unit_ids=unit_ids,
                unit_regions=regions,
                names=np.char.add(f"row{row:06d}-w", np.char.zfill(w.astype(str), 6)),
                t_start=w * span * (NATIVE_BIN_MS / 1000.0),
                bin_s=bin_s,
                values=values,
                split=None if self.shard_split is None else np.full(len(values), self.shard_split),
                split_key=np.full(len(values), key),  # val is carved per segment (or per session)
            )

    def _meta(self, batch: pa.RecordBatch, where: str) -> tuple[SessionMeta, str]:
        ids = {}
        for name in ID_COLUMNS:
            value = batch.column(name)[0].as_py()
            if value is None or str(value) == "":
                raise SourceError(f"{where}: {name} is empty")
            ids[name] = str(value)
        source = None
        if "source_dataset" in batch.schema.names:
            source = batch.column("source_dataset")[0].as_py()
        source = str(source) if source not in (None, "") else self.entry.name
        parts = [quote(p, safe="") for p in (source, ids["subject_id"], ids["session_id"], ids["segment_id"])]
        session = "/".join(parts)
        key = session if self.opts.val_unit == "segment" else "/".join(parts[:3])
        species = self.opts.species_map.get(source, self.entry.species)
        meta = SessionMeta(session=session, subject=f"{parts[0]}/{parts[1]}", species=species, task=self.entry.task)
        return meta, key

    def stats(self) -> dict:
        return {f"pile_{k}": v for k, v in self._stats.items()}

    def close(self) -> None:
        if getattr(self, "_fh", None) is not None:
            self._fh.close()
            self._fh = None


READER = register(PileEntry, discover, open_item)
