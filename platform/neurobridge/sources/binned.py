"""Binned count matrices with behaviour (kind ``binned``): MATLAB v5/v7.3, NPY, NPZ or HDF5, any fsspec URI.

Many public datasets ship binned counts, not spike times: Stevenson et al. 2011's M1 file (``spikes`` [units ×
bins] of 50 ms with ``handVel``), Glaser's Neural_Decoding sets, NLB's tensors. The entry says which array holds
the counts and in which axis order, the native bin width, the behaviour arrays and their column names, and whether
windows are fixed chunks or one per trial of a table in the file (``catalog.BinnedOptions``).

* Re-binning only by exact integer merges: ``ingest.bin_ms`` must be a whole multiple ``k`` of the native width
  (``k`` native bins are summed; behaviour is averaged over them). 50 ms stays 50 ms unless asked; anything else is
  an error naming both widths.
* Streams: windows are cut in blocks of at most ``block_cells`` cells, each read as one span of bins (a dataset
  slice in HDF5/v7.3, a memory map or byte range in ``.npy``; MATLAB v5 and NPZ arrays load per variable).
* Bad input fails the item, naming file, array and problem: counts that are negative, NaN or non-integer, arrays
  whose bin counts disagree, behaviour names that do not match the columns, a bin width that does not divide.
* Splits: an official split only from the trial table's ``split`` array; chunks of a continuous recording are
  hashed by ``split_block_s`` blocks (adjacent chunks are correlated), else one by one.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from neurobridge.catalog import BinnedEntry, CatalogEntry, IngestConfig
from neurobridge.config import Settings
from neurobridge.sources.base import (
    BinnedSource,
    Item,
    SessionMeta,
    SourceError,
    WindowBlock,
    make_items,
    register,
)
from neurobridge.sources.io.arrays import SUFFIXES, ArrayFile, open_arrays, read_all, read_strings
from neurobridge.storage import filesystem


def rebin_factor(native_ms: float, bin_ms: float, where: str) -> int:
    """How many native bins make one stored bin; anything but a whole multiple is refused."""
    k = bin_ms / native_ms
    if k < 1 - 1e-9 or abs(k - round(k)) > 1e-9:
        raise SourceError(
            f"{where}: ingest.bin_ms {bin_ms:g} is not a whole multiple of the file's bin width {native_ms:g} ms; "
            f"use {native_ms:g} or a multiple of it (bins are summed exactly; finer bins cannot be recovered)"
        )
    return int(round(k))


def rebin(values: np.ndarray, k: int, how: str = "sum") -> np.ndarray:
    """``[..., bins]`` → ``[..., bins // k]`` by summing (counts) or averaging (behaviour) ``k`` consecutive bins;
    the tail that does not fill a bin is dropped. Integer sums stay exact integers."""
    n = values.shape[-1] // k
    parts = values[..., : n * k].reshape(*values.shape[:-1], n, k)
    if how == "sum":
        return parts.sum(axis=-1, dtype=np.int64 if values.dtype.kind in "iub" else np.float64)
    return parts.mean(axis=-1)


def check_counts(values: np.ndarray, where: str, first_bin: int = 0) -> np.ndarray:
    """Counts [units, bins] as int64, or an error naming the first bad cell: NaN, negative or non-integer."""
    if values.dtype.kind in "iub":
        if values.dtype.kind == "i" and values.size and values.min() < 0:
            u, b = np.unravel_index(int(np.argmin(values)), values.shape)
            raise SourceError(f"{where}: negative count {int(values[u, b])} at unit {u}, bin {first_bin + b}")
        return values.astype(np.int64, copy=False)
    if values.dtype.kind != "f":
        raise SourceError(f"{where}: counts have dtype {values.dtype}; expected integers (or integral floats)")
    problems = (
        (~np.isfinite(values), "NaN or infinite"),
        (values < 0, "negative"),
        (values != np.round(values), "non-integer"),
    )
    for bad, what in problems:
        if bad.any():
            u, b = np.unravel_index(int(np.argmax(bad)), values.shape)
            raise SourceError(f"{where}: {what} count {float(values[u, b]):g} at unit {u}, bin {first_bin + b}")
    return values.astype(np.int64)


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    root = entry.resolved_uri(settings)
    fs, path = filesystem(root, settings)
    if path.lower().endswith(SUFFIXES) and fs.isfile(path):
        files, base = [path], posixpath.dirname(path)
    else:
        if not fs.exists(path):
            raise SourceError(f"{root}: no such file, directory or object prefix")
        patterns = entry.selection.include or [f"**/*{s}" for s in SUFFIXES]
        files = sorted({f for pat in patterns for f in fs.glob(posixpath.join(path, pat)) if f.endswith(SUFFIXES)})
        base = path
    return make_items(fs, root, base, files, entry.selection.exclude, entry.selection.limit)


def open_item(entry: CatalogEntry, item: Item, settings: Settings) -> ArraySource:
    fs, path = filesystem(item.uri, settings)
    return ArraySource(entry, item, open_arrays(fs, path, item.uri))


@dataclass(frozen=True)
class _Layout:
    """The file's arrays checked against the options: bins, units, behaviour columns, trial starts."""

    n_bins: int  # native bins
    n_units: int
    behavior: list[tuple[str, int]]  # (array, its bin axis) per behaviour array
    names: list[str]  # stored behaviour names, <array>.<column>


class ArraySource(BinnedSource):
    """One file of binned counts → window blocks (one session per file)."""

    def __init__(self, entry: CatalogEntry, item: Item, arrays: ArrayFile):
        if not isinstance(entry, BinnedEntry):
            raise SourceError(f"{item.uri}: the binned reader needs a kind 'binned' entry, got {entry.kind!r}")
        self.item, self.entry, self.opts, self.f = item.uri, entry, entry.binned, arrays
        stem = posixpath.splitext(item.rel)[0].replace("/", "_")
        self.meta = SessionMeta(
            session=stem, subject=entry.subject or "unknown", species=entry.species, task=entry.task
        )
        self._stats = {"windows": 0, "tail_bins_dropped": 0, "trials_outside": 0}
        try:
            self.layout = self._layout()
        except SourceError:
            self.close()
            raise

    def where(self, array: str) -> str:
        return f"{self.item}: array {array!r}"

    def _layout(self) -> _Layout:
        o = self.opts
        shape = self.f.shape(o.counts)
        if len(shape) != 2:
            raise SourceError(f"{self.where(o.counts)}: counts must be 2-D ({o.axes}), got shape {shape}")
        n_units, n_bins = shape if o.axes == "units_bins" else shape[::-1]
        behavior, names = [], []
        for b in o.behavior:
            bshape = self.f.shape(b.array)
            if len(bshape) == 1:
                bshape = (bshape[0], 1) if b.axes == "bins_channels" else (1, bshape[0])
            if len(bshape) != 2:
                raise SourceError(f"{self.where(b.array)}: behaviour must be 2-D ({b.axes}), got shape {bshape}")
            axis = 0 if b.axes == "bins_channels" else 1
            if bshape[axis] != n_bins:
                raise SourceError(
                    f"{self.where(b.array)}: has {bshape[axis]} bins but counts {o.counts!r} have {n_bins} "
                    "(behaviour must be binned like the counts)"
                )
            if bshape[1 - axis] != len(b.names):
                raise SourceError(
                    f"{self.where(b.array)}: has {bshape[1 - axis]} columns but names lists {len(b.names)} "
                    f"({', '.join(b.names)})"
                )
            behavior.append((b.array, axis))
            names += [f"{b.array}.{n}" for n in b.names]
        if o.time is not None and int(np.prod(self.f.shape(o.time))) != n_bins:
            raise SourceError(
                f"{self.where(o.time)}: has {int(np.prod(self.f.shape(o.time)))} values but counts have {n_bins} bins"
            )
        return _Layout(n_bins, n_units, behavior, names)

    def _units(self) -> tuple[np.ndarray, np.ndarray]:
        o, n = self.opts, self.layout.n_units
        ids = np.arange(n).astype(str) if o.unit_ids is None else read_strings(self.f, o.unit_ids)
        regions = np.full(n, o.region) if o.regions is None else read_strings(self.f, o.regions)
        for name, got in ((o.unit_ids, ids), (o.regions, regions)):
            if len(got) != n:
                raise SourceError(f"{self.where(str(name))}: has {len(got)} entries but counts have {n} units")
        return ids, regions

    def _read_counts(self, start: int, stop: int) -> np.ndarray:
        """Native counts [units, bins] of bins ``start:stop``, checked."""
        o = self.opts
        part = self.f.span(o.counts, 1 if o.axes == "units_bins" else 0, start, stop)
        part = part if o.axes == "units_bins" else part.T
        return check_counts(np.asarray(part), self.where(o.counts), start)

    def _read_behavior(self, start: int, stop: int) -> np.ndarray | None:
        """Behaviour [channels, bins] of bins ``start:stop`` (all arrays stacked), float64."""
        if not self.layout.behavior:
            return None
        parts = []
        for array, axis in self.layout.behavior:
            part = np.asarray(self.f.span(array, axis, start, stop), dtype=np.float64)
            part = part.reshape(-1, 1) if part.ndim == 1 and axis == 0 else part
            parts.append(part.T if axis == 0 else part)
        return np.concatenate(parts, axis=0)

    def _starts(self, cfg: IngestConfig, span: int) -> tuple[np.ndarray, np.ndarray | None]:
        """First native bin of every window and its official split (None: no split)."""
        o, n = self.opts, self.layout.n_bins
        if o.trials is None:
            count = n // span
            self._stats["tail_bins_dropped"] = n - count * span
            return np.arange(count, dtype=np.int64) * span, None
        raw = np.asarray(read_all(self.f, o.trials.start), dtype=np.float64).ravel()
        if o.trials.in_seconds:
            if o.time is None:
                raise SourceError(f"{self.where(o.trials.start)}: trials.in_seconds needs the `time` array")
            clock = np.asarray(read_all(self.f, o.time), dtype=np.float64).ravel()
            raw = np.searchsorted(clock, raw - 1e-9)
        starts = np.round(raw - cfg.window.pre_s * 1000.0 / o.bin_ms).astype(np.int64)
        split = None
        if o.trials.split is not None:
            split = read_strings(self.f, o.trials.split)
            if len(split) != len(starts):
                raise SourceError(f"{self.where(o.trials.split)}: has {len(split)} labels for {len(starts)} trials")
        inside = (starts >= 0) & (starts + span <= n)
        self._stats["trials_outside"] = int((~inside).sum())
        return starts[inside], None if split is None else split[inside]

    def _window_bins(self, cfg: IngestConfig) -> int:
        if self.opts.trials is not None and cfg.window.post_s is None:
            raise SourceError(f"{self.item}: trial windows need ingest.window.post_s (their length)")
        length = cfg.window.chunk_s if self.opts.trials is None else cfg.window.pre_s + cfg.window.post_s
        n = int(np.floor(length * 1000.0 / cfg.bin_ms + 1e-9))
        if n < 1:
            raise SourceError(f"{self.item}: windows of {length:g} s are shorter than one {cfg.bin_ms:g} ms bin")
        return n

    def blocks(self, cfg: IngestConfig) -> Iterator[WindowBlock]:
        o = self.opts
        k = rebin_factor(o.bin_ms, cfg.bin_ms, self.where(o.counts))
        n_out = self._window_bins(cfg)
        span = n_out * k
        starts, split = self._starts(cfg, span)
        unit_ids, regions = self._units()
        clock = None if o.time is None else np.asarray(read_all(self.f, o.time), dtype=np.float64).ravel()
        per_block = max(1, o.block_cells // max(1, self.layout.n_units * span))
        for w0 in range(0, len(starts), per_block):
            first = starts[w0 : w0 + per_block]
            lo, hi = int(first.min()), int(first.max()) + span
            counts, behavior = self._read_counts(lo, hi), self._read_behavior(lo, hi)
            cut = (first - lo)[:, None] + np.arange(span)[None, :]  # [w, span] bins into the read span
            values = rebin(counts[:, cut], k).transpose(1, 0, 2)  # [units, w, n_out] → [w, units, n_out]
            beh = None if behavior is None else rebin(behavior[:, cut], k, "mean").transpose(1, 2, 0)
            t0 = clock[first] if clock is not None else first * (o.bin_ms / 1000.0)
            self._stats["windows"] += len(first)
            yield WindowBlock(
                meta=self.meta,
                unit_ids=unit_ids,
                unit_regions=regions,
                names=np.char.add("w", np.char.zfill(np.arange(w0, w0 + len(first)).astype(str), 6)),
                t_start=np.asarray(t0, dtype=np.float64),
                bin_s=cfg.bin_ms / 1000.0,
                values=np.ascontiguousarray(values),
                split=None if split is None else split[w0 : w0 + len(first)],
                split_key=self._split_keys(first),
                behavior=None if beh is None else beh.astype(np.float32),
                behavior_names=self.layout.names or None,
            )

    def _split_keys(self, first: np.ndarray) -> np.ndarray | None:
        block = self.opts.split_block_s
        if block is None or self.opts.trials is not None:
            return None
        index = np.floor(first * (self.opts.bin_ms / 1000.0) / block).astype(np.int64)
        return np.char.add(f"{self.meta.session}/block", index.astype(str))

    def stats(self) -> dict:
        return {f"binned_{k}": v for k, v in self._stats.items()}

    def close(self) -> None:
        self.f.close()


READER = register(BinnedEntry, discover, open_item)
