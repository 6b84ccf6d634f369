"""IBL ALF sessions: ``spikes.*``, ``clusters.*`` and ``trials.*`` NumPy files, found by path or through ONE.

``.npy`` files are read by byte range after parsing their header (``sources/io/npy.py``), so a session streams from
S3 as well as from disk, and object arrays are refused (``allow_pickle=False`` everywhere: input is never
unpickled). Sessions listed and fetched through ONE are ``sources/io/ibl_one.py``.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re

import numpy as np

from neurobridge.catalog import AlfEntry, CatalogEntry
from neurobridge.config import Settings
from neurobridge.sources.base import (
    Intervals,
    Item,
    SessionMeta,
    SourceError,
    SpikeSource,
    TimeSeries,
    decode_strings,
    fingerprint,
    glob_under,
    make_items,
    register,
)
from neurobridge.sources.io.ibl_one import discover_sessions, download_item
from neurobridge.sources.io.npy import NpyRange, load_npy
from neurobridge.storage import filesystem

REGION_FILES = ("clusters.brainLocationAcronyms_ccf_2017.npy", "clusters.acronym.npy")
# Allen CCF structure ids, per cluster or per channel (BWM releases): mapped to acronyms with region_map
# (keys are the ids as text) or, when a table is given, with its id → acronym rows.
REGION_ID_FILES = ("clusters.brainLocationIds_ccf_2017.npy",)
WHEEL_HZ = 250.0
SESSION_RE = re.compile(r"(?P<subject>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<number>\d{1,3})(?:/|$)")


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    if entry.one is not None:
        return discover_sessions(entry, settings)
    root = entry.resolved_uri(settings)
    fs, path = filesystem(root, settings)
    found = set(glob_under(fs, root, path, entry.selection.include or ["**/spikes.times.npy"], "spikes.times.npy"))
    if fs.exists(posixpath.join(path, "spikes.times.npy")):
        found.add(posixpath.join(path, "spikes.times.npy"))
    folders = sorted({posixpath.dirname(f) for f in found})
    items = make_items(fs, root, path, folders, entry.selection.exclude, entry.selection.limit)
    for it in items:
        folder = it.uri.split("://", 1)[1] if "://" in it.uri else it.uri
        it.fingerprint = _folder_fingerprint(fs, folder)
    return items


def _folder_fingerprint(fs, folder: str) -> str:
    parts = []
    for name in ("spikes.times.npy", "spikes.clusters.npy"):
        p = posixpath.join(folder, name)
        parts.append(fingerprint(fs.info(p)) if fs.exists(p) else "missing")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


def open_item(entry: CatalogEntry, item: Item, settings: Settings) -> ALFSource:
    if entry.one is not None and entry.one.mode == "remote":
        download_item(entry, item, settings)
    root = None if entry.one is not None else entry.resolved_uri(settings)
    return ALFSource(item.uri, entry, settings, root_uri=root)


@functools.lru_cache(maxsize=8)
def _region_table_cached(uri: str, settings_json: str) -> dict[str, str]:
    import csv
    import io

    from neurobridge.config import Settings

    fs, path = filesystem(uri, Settings.model_validate_json(settings_json))
    try:
        with fs.open(path, "rb") as f:
            rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")))
    except FileNotFoundError:
        raise SourceError(f"{uri}: region table not found") from None
    if not rows or not {"id", "acronym"} <= set(rows[0]):
        raise SourceError(f"{uri}: a region table needs 'id' and 'acronym' columns")
    return {str(int(float(r["id"]))): r["acronym"] for r in rows if r["id"]}


def _region_table(uri: str, settings: Settings) -> dict[str, str]:
    return _region_table_cached(uri, settings.model_dump_json())


class ALFSource(SpikeSource):
    def __init__(self, uri: str, entry: CatalogEntry, settings: Settings, root_uri: str | None = None):
        self.item = uri
        self._settings = settings
        self._fs, self._dir = filesystem(uri, settings)
        self._root = filesystem(root_uri, settings)[1] if root_uri else None
        fs, d = self._fs, self._dir
        self._times = NpyRange(fs, posixpath.join(d, "spikes.times.npy"), f"{uri}/spikes.times.npy")
        try:
            self._clusters = NpyRange(fs, posixpath.join(d, "spikes.clusters.npy"), f"{uri}/spikes.clusters.npy")
        except SourceError:
            self._times.close()
            raise
        n_t, n_c = len(self._times), len(self._clusters)
        if n_t != n_c or self._times.shape[1:] or self._clusters.shape[1:]:
            self.close()
            raise SourceError(
                f"{uri}: spikes.times has shape {self._times.shape} but spikes.clusters has shape "
                f"{self._clusters.shape}; they must be 1-D and of equal length"
            )
        if self._clusters.dtype.kind not in "iu":
            self.close()
            raise SourceError(f"{uri}: spikes.clusters must hold integers, not {self._clusters.dtype}")
        self.segments = np.array([0, n_t], dtype=np.int64)
        self.segment_units = None
        self._init_units(entry)
        self.meta = self._meta(entry)

    def _init_units(self, entry: CatalogEntry) -> None:
        regions = self._region_labels(entry)
        labels = self._quality_labels()
        if regions is not None and labels is not None and len(regions) != len(labels):
            raise SourceError(f"{self.item}: {len(regions)} cluster regions but {len(labels)} cluster labels")
        if entry.ingest.good_units_only and labels is None:
            raise SourceError(
                f"{self.item}: good_units_only is set but the session has no quality labels "
                "(clusters.label.npy or a label column in clusters.metrics.pqt)"
            )
        n_table = len(regions) if regions is not None else (len(labels) if labels is not None else None)
        if n_table is None:
            # No clusters table: units are the cluster ids that fire (one streaming pass over the ids).
            max_id = self._scan_max_cluster()
            seen = np.zeros(max_id + 1, dtype=bool)
            for a in range(0, len(self._clusters), 4_000_000):
                seen[self._clusters.read(a, a + 4_000_000)] = True
            ids = np.flatnonzero(seen)
            regions_kept = np.full(len(ids), "unknown")
        else:
            ids = np.arange(n_table)
            regions_kept = regions if regions is not None else np.full(n_table, "unknown")
            if entry.ingest.good_units_only and labels is not None:
                good = np.asarray(labels, dtype=float) >= entry.ingest.good_label_min - 1e-9
                ids, regions_kept = ids[good], regions_kept[good]
        self._n_table = n_table
        self.unit_ids = ids.astype(str)
        self.unit_regions = np.asarray(regions_kept).astype(str)
        size = (int(ids.max()) + 1) if len(ids) else 1
        if n_table is not None:
            size = max(size, n_table)
        self._lut = np.full(size, -1, dtype=np.int64)
        self._lut[ids] = np.arange(len(ids))

    def _region_labels(self, entry: CatalogEntry) -> np.ndarray | None:
        """Acronyms per cluster: from an acronym file, else from CCF ids (per cluster, or per channel through
        ``clusters.channels``) mapped with the entry's region table; unmapped ids stay as their number."""
        fs, d = self._fs, self._dir
        for name in REGION_FILES:
            p = posixpath.join(d, name)
            if fs.exists(p):
                return decode_strings(load_npy(fs, p, f"{self.item}/{name}"))
        ids = None
        for name in REGION_ID_FILES:
            p = posixpath.join(d, name)
            if fs.exists(p):
                ids = load_npy(fs, p, f"{self.item}/{name}")
        ch_path, ch_ids = (
            posixpath.join(d, "clusters.channels.npy"),
            posixpath.join(d, "channels.brainLocationIds_ccf_2017.npy"),
        )
        if ids is None and fs.exists(ch_path) and fs.exists(ch_ids):
            channels = load_npy(fs, ch_path, f"{self.item}/clusters.channels.npy").astype(np.int64)
            per_channel = load_npy(fs, ch_ids, f"{self.item}/channels.brainLocationIds_ccf_2017.npy")
            if len(channels) and (channels.min() < 0 or channels.max() >= len(per_channel)):
                raise SourceError(
                    f"{self.item}: clusters.channels points outside channels.brainLocationIds_ccf_2017 "
                    f"({len(per_channel)} channels)"
                )
            ids = per_channel[channels]
        if ids is None:
            return None
        ids = np.asarray(ids)
        table = _region_table(entry.region_table, self._settings) if entry.region_table else {}
        text = ids.astype(np.int64).astype(str) if ids.dtype.kind in "iuf" else decode_strings(ids)
        return np.array([table.get(t, t) for t in text.tolist()])

    def _quality_labels(self) -> np.ndarray | None:
        """IBL quality label per cluster (1 = good): ``clusters.label.npy`` or the ``label`` column of
        ``clusters.metrics.pqt`` (Parquet, read with pyarrow: never unpickled)."""
        fs, d = self._fs, self._dir
        p = posixpath.join(d, "clusters.label.npy")
        if fs.exists(p):
            return load_npy(fs, p, f"{self.item}/clusters.label.npy")
        p = posixpath.join(d, "clusters.metrics.pqt")
        if fs.exists(p):
            import pyarrow.parquet as pq

            with fs.open(p, "rb") as f:
                table = pq.read_table(f)
            if "label" in table.column_names:
                return table.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
        return None

    def _scan_max_cluster(self) -> int:
        top = -1
        for a in range(0, len(self._clusters), 4_000_000):
            block = self._clusters.read(a, a + 4_000_000)
            if len(block):
                if block.min() < 0:
                    raise SourceError(f"{self.item}: spikes.clusters holds negative cluster ids")
                top = max(top, int(block.max()))
        return max(top, 0)

    def _meta(self, entry: CatalogEntry) -> SessionMeta:
        path = self._dir.replace("\\", "/")
        m = SESSION_RE.search(path)
        if m:
            probe = posixpath.basename(path) if not path.rstrip("/").endswith("/alf") else ""
            session = f"{m['subject']}_{m['date']}_{int(m['number']):03d}" + (f"_{probe}" if probe else "")
            subject = m["subject"]
        else:
            session = posixpath.basename(path.rstrip("/"))
            subject = entry.subject or "unknown"
        return SessionMeta(session=session, subject=subject, species=entry.species, task=entry.task)

    def read_times(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._times.read(start, stop), dtype=np.float64)

    def read_units(self, start: int, stop: int) -> np.ndarray:
        c = np.asarray(self._clusters.read(start, stop), dtype=np.int64)
        if len(c) and (c.min() < 0 or c.max() >= len(self._lut)):
            bad = c[(c < 0) | (c >= len(self._lut))][0]
            raise SourceError(
                f"{self.item}: spikes.clusters holds cluster id {bad}, outside the clusters table "
                f"(0..{len(self._lut) - 1})"
            )
        return self._lut[c]

    def intervals(self, name: str) -> Intervals | None:
        """ALF object ``name`` (e.g. trials) from this folder or its parents up to the session folder."""
        fs, d = self._fs, self._dir
        for folder in _ancestors(d, self._root):
            files = fs.glob(posixpath.join(folder, f"{name}.*.npy"))
            if not files:
                continue
            columns: dict[str, np.ndarray] = {}
            for f in sorted(files):
                attr = posixpath.basename(f)[len(name) + 1 : -len(".npy")]
                arr = load_npy(fs, f, f)
                if arr.ndim == 2 and arr.shape[1] == 2 and attr == "intervals":
                    columns["start_time"], columns["stop_time"] = arr[:, 0], arr[:, 1]
                elif arr.ndim == 1:
                    columns[attr] = decode_strings(arr) if arr.dtype.kind in "SU" else arr
            lengths = {len(v) for v in columns.values()}
            if len(lengths) > 1:
                raise SourceError(f"{folder}: {name}.* attributes have different lengths {sorted(lengths)}")
            return Intervals(name, columns) if columns else None
        return None

    def behavior_series(self) -> list[TimeSeries]:
        """Wheel velocity from ``wheel.position``/``wheel.timestamps`` (irregular encoder samples): the position
        is interpolated onto a uniform grid first, so a bin's mean velocity is its displacement over its length."""
        fs = self._fs
        for folder in _ancestors(self._dir, self._root):
            pos_path = posixpath.join(folder, "wheel.position.npy")
            ts_path = posixpath.join(folder, "wheel.timestamps.npy")
            if not (fs.exists(pos_path) and fs.exists(ts_path)):
                continue
            pos = np.asarray(load_npy(fs, pos_path, pos_path), dtype=np.float64).ravel()
            ts = np.asarray(load_npy(fs, ts_path, ts_path), dtype=np.float64).ravel()
            if len(pos) != len(ts):
                raise SourceError(f"{folder}: wheel.position has {len(pos)} samples, wheel.timestamps {len(ts)}")
            if len(ts) < 2:
                return []
            if np.any(np.diff(ts) < 0):
                raise SourceError(f"{ts_path}: wheel timestamps are not sorted")
            grid = np.arange(ts[0], ts[-1], 1.0 / WHEEL_HZ)
            velocity = np.gradient(np.interp(grid, ts, pos), 1.0 / WHEEL_HZ) if len(grid) > 1 else np.zeros(len(grid))
            return [TimeSeries("wheel.velocity", grid, velocity.astype(np.float32))]
        return []

    def close(self) -> None:
        for arr in (getattr(self, "_times", None), getattr(self, "_clusters", None)):
            if arr is not None:
                arr.close()


def _ancestors(folder: str, root: str | None, depth: int = 3) -> list[str]:
    """The folder and up to ``depth`` parents, never above the catalog root or an ALF session folder."""
    out, current = [folder], folder
    for _ in range(depth):
        parent = posixpath.dirname(current.rstrip("/"))
        if not parent or parent == current or (root and not parent.startswith(root.rstrip("/"))):
            break
        out.append(parent)
        if SESSION_RE.search(parent + "/") and re.search(r"/\d{1,3}$", parent):
            break
        current = parent
    return out


READER = register(AlfEntry, discover, open_item)
