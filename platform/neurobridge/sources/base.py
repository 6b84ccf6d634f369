"""What every source reader provides to the ingest engine.

A session's spikes are stored as *segments*, each sorted by time: one per unit in NWB (ragged
``units/spike_times``), one for the whole session in ALF (``spikes.times`` with ``spikes.clusters``). The engine
streams over segments in bounded blocks and asks for contiguous ranges, so no reader ever loads a session whole.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings


@dataclass(frozen=True)
class Reader:
    """What a reader file declares: the entry model it reads (its kind and options) and how it lists and opens
    items. ``discover`` lists without opening any recording; ``open_item`` returns a spike or a binned source."""

    entry: type[CatalogEntry]
    discover: Callable[[CatalogEntry, Settings], list[Item]]
    open_item: Callable[[CatalogEntry, Item, Settings], SpikeSource | BinnedSource]


READERS: dict[str, Reader] = {}


def register(entry: type[CatalogEntry], discover, open_item) -> Reader:
    """Make ``entry.KIND`` readable; called once at the bottom of each ``sources/<kind>.py``."""
    READERS[entry.KIND] = Reader(entry, discover, open_item)
    return READERS[entry.KIND]


class SourceError(ValueError):
    """A recording that cannot be ingested; the message names the item and the problem."""


@dataclass
class SessionMeta:
    session: str
    subject: str
    species: str
    task: str


@dataclass
class Intervals:
    """Events to align windows to (trials, stimulus presentations)."""

    name: str
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


@dataclass
class TimeSeries:
    """A continuous behavioural signal (hand velocity, wheel velocity): sorted ``timestamps`` and ``data`` [T, K].

    ``data`` may be a lazy array (an h5py dataset): the engine slices only the span of the windows it bins.
    """

    name: str
    timestamps: np.ndarray
    data: object
    columns: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        k = 1 if len(getattr(self.data, "shape", ())) < 2 else self.data.shape[1]
        cols = self.columns if len(self.columns) == k else ([""] if k == 1 else [str(i) for i in range(k)])
        return [f"{self.name}.{c}" if c else self.name for c in cols]


class SpikeSource(ABC):
    """Base class for a session reader; subclasses fill the attributes and implement the reads."""

    item: str  # the item's URI, for error messages
    meta: SessionMeta
    unit_ids: np.ndarray  # raw unit ids as strings, in storage order
    unit_regions: np.ndarray  # raw region labels (strings), same order
    segments: np.ndarray  # int64 offsets [n_segments + 1] into the spike arrays
    segment_units: np.ndarray | None  # unit index per segment, or None when segments mix units
    heldout: np.ndarray | None = None  # bool per unit: NLB's held-out units for co-smoothing, when the file says

    @property
    def n_spikes(self) -> int:
        return int(self.segments[-1])

    @abstractmethod
    def read_times(self, start: int, stop: int) -> np.ndarray:
        """Spike times ``start:stop`` in storage order (float64 seconds)."""

    def read_units(self, start: int, stop: int) -> np.ndarray:
        """Unit index (into ``unit_ids``) of spikes ``start:stop``; sources with mixed segments override."""
        raise TypeError(f"{type(self).__name__} stores one unit per segment; use segment_units")

    def intervals(self, name: str) -> Intervals | None:
        return None

    def behavior_series(self) -> list[TimeSeries]:
        """Continuous behaviour the session holds (binned by the engine into each window's bins)."""
        return []

    def time_range(self) -> tuple[float, float]:
        """First and last spike time, from segment ends only (no full read)."""
        firsts, lasts = [], []
        for a, b in zip(self.segments[:-1], self.segments[1:], strict=True):
            if b > a:
                firsts.append(self.read_times(a, a + 1)[0])
                lasts.append(self.read_times(b - 1, b)[0])
        if not firsts:
            return 0.0, 0.0
        return float(np.nanmin(firsts)), float(np.nanmax(lasts))

    def close(self) -> None:  # noqa: B027 - readers without open handles need nothing here
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class WindowBlock:
    """Sample windows that a binned source (MUA, pre-binned counts) has already cut, for one session.

    ``values`` is ``[windows, units, bins]`` in the source's unit order: integer counts (→ ``counts``) or floats
    (→ ``mua``). Readers never decide splits: ``split`` is the source's *official* split per window (None: it has
    none) and ``split_key`` what must never straddle two splits (an image, a segment; default: the stimulus id, else
    the window). Ingest keeps official test/val windows, carves val out of official train windows by hashing
    ``split_key``, and hashes every window into train/val/test when there is no official split.
    """

    meta: SessionMeta
    unit_ids: np.ndarray  # [U] raw ids (strings)
    unit_regions: np.ndarray  # [U] raw region labels
    names: np.ndarray  # [W] window names, unique within the item
    t_start: np.ndarray  # [W] float64 seconds (NaN when the source has no session clock)
    bin_s: float
    values: np.ndarray  # [W, U, B]
    split: np.ndarray | None = None
    split_key: np.ndarray | None = None
    stimulus_id: np.ndarray | None = None
    repeat: np.ndarray | None = None
    behavior: np.ndarray | None = None  # [W, B, K] float32
    behavior_names: list[str] | None = None


class BinnedSource(ABC):
    """A reader whose data come binned or continuous: it yields window blocks instead of spike ranges.

    Blocks must be bounded in size (the engine writes each as it comes), so a reader streams its file.
    """

    item: str

    @abstractmethod
    def blocks(self, cfg) -> Iterator[WindowBlock]:
        """Window blocks for the entry's ingest config (``catalog.IngestConfig``)."""

    def side_outputs(self) -> Iterator[tuple[str, pa.Table]]:
        """Extra tables written beside the rows as ``<version>/<name>/part-<item>.parquet`` (e.g. TVSD's
        normalised per-image responses); each name's tables must share one schema. A table with ``split`` and
        ``stimulus_id`` columns holds official splits: ingest carves val out of train by image, as for the rows."""
        return iter(())

    def stats(self) -> dict:
        """Extra counts for the item's status record, read after ``blocks`` is exhausted (e.g. dropped tail bins)."""
        return {}

    def close(self) -> None:  # noqa: B027
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def decode_strings(values) -> np.ndarray:
    """HDF5/NumPy string columns (bytes or str) → a unicode array."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S" or arr.dtype == object:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel()]).reshape(arr.shape)
    return arr.astype(str)


@dataclass
class Item:
    """One unit of ingest work (a session file or folder); failures are recorded per item."""

    key: str  # unique, path-safe name inside a dataset version
    uri: str  # absolute URI of the file or folder
    rel: str  # path relative to the catalog entry's root, for people
    fingerprint: str  # size + etag/mtime: a changed source gives a new dataset version
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "uri": self.uri,
            "rel": self.rel,
            "fingerprint": self.fingerprint,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Item:
        base = {k: d[k] for k in ("key", "uri", "rel", "fingerprint")}
        return cls(**base, extra={k: v for k, v in d.items() if k not in base})


def item_key(rel: str) -> str:
    """A readable, path-safe, collision-free key for a relative path."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", rel.strip("/")).strip("._") or "item"
    digest = hashlib.blake2b(rel.encode(), digest_size=4).hexdigest()
    return f"{stem[-80:]}-{digest}"


def fingerprint(info: dict) -> str:
    """Identity of a stored object from listing metadata only (no content read)."""
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size', '')}:{str(tag).strip(chr(34))}"


def make_items(fs, root: str, base: str, paths: list[str], exclude: list[str], limit: int | None) -> list[Item]:
    """Items for listed paths below ``base``; URIs keep the root's scheme so workers can reopen them."""
    items = []
    scheme = root.split("://", 1)[0] if "://" in root else None
    for p in sorted(paths):
        rel = posixpath.relpath(p, base)
        if rel == ".":
            rel = posixpath.basename(p.rstrip("/"))
        if any(fnmatch.fnmatch(rel, pat) for pat in exclude):
            continue
        uri = f"{scheme}://{p}" if scheme else p
        items.append(Item(key=item_key(rel), uri=uri, rel=rel, fingerprint=fingerprint(fs.info(p))))
    return items[:limit] if limit else items


def glob_under(fs, root: str, path: str, patterns: list[str], suffix: str) -> list[str]:
    """Objects below ``path`` matching any pattern and ending in ``suffix``; a missing root is an error."""
    if not fs.exists(path):
        raise SourceError(f"{root}: no such directory or object prefix")
    return sorted({f for pat in patterns for f in fs.glob(posixpath.join(path, pat)) if f.endswith(suffix)})
