"""NWB (DANDI, NLB, Allen Visual Coding) sessions read lazily with h5py from any fsspec URI.

pynwb builds the whole object graph and reads eagerly; ingest needs only the units table, a few metadata
fields and one intervals table, so it reads the HDF5 layout that the NWB schema fixes, slice by slice.
"""

from __future__ import annotations

import posixpath

import h5py
import numpy as np

from ..catalog import CatalogEntry
from ..config import Settings
from ..storage import filesystem, is_local_fs
from .base import (
    Intervals,
    Item,
    SessionMeta,
    SourceError,
    SpikeSource,
    TimeSeries,
    decode_strings,
    glob_under,
    make_items,
)

REGION_COLUMNS = ("location", "brain_area", "ecephys_structure_acronym", "region")


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    if entry.dandi is not None and entry.dandi.resolve == "api":
        from .dandi import discover_dandi

        return discover_dandi(entry)
    root = entry.resolved_uri(settings)
    fs, path = filesystem(root, settings)
    if path.endswith(".nwb") and fs.isfile(path):
        files, base = [path], posixpath.dirname(path)
    else:
        files = glob_under(fs, root, path, entry.selection.include or ["**/*.nwb"], ".nwb")
        base = path
    return make_items(fs, root, base, files, entry.selection.exclude, entry.selection.limit)


def open_item(entry: CatalogEntry, item: Item, settings: Settings) -> NWBSource:
    return NWBSource(item.uri, entry, settings)


class NWBSource(SpikeSource):
    def __init__(self, uri: str, entry: CatalogEntry, settings: Settings):
        self.item = uri
        fs, path = filesystem(uri, settings)
        self._fh = None
        try:
            if is_local_fs(fs):
                self._h5 = h5py.File(path, "r")
            else:
                self._fh = fs.open(path, "rb", block_size=4 << 20, cache_type="readahead")
                self._h5 = h5py.File(self._fh, "r")
        except FileNotFoundError:
            raise SourceError(f"{uri}: file not found") from None
        except OSError as err:
            raise SourceError(f"{uri}: cannot open as HDF5/NWB (truncated or corrupt file?): {err}") from None
        try:
            self._read_units(entry)
        except SourceError:
            self.close()
            raise
        except (KeyError, OSError, ValueError, TypeError) as err:
            self.close()
            raise SourceError(f"{uri}: unreadable NWB units table: {err}") from None

    def _read_units(self, entry: CatalogEntry) -> None:
        h5, uri = self._h5, self.item
        if "units" not in h5:
            raise SourceError(f"{uri}: no 'units' table (no sorted spikes in this file)")
        units = h5["units"]
        if "spike_times" not in units:
            raise SourceError(f"{uri}: 'units' has no 'spike_times' column")
        self._spike_times = units["spike_times"]
        n_total = self._spike_times.shape[0]
        if "spike_times_index" not in units:
            raise SourceError(
                f"{uri}: 'units/spike_times_index' is missing, so spikes cannot be assigned to units "
                "(NWB stores spike_times as a ragged column that needs its index)"
            )
        ends = units["spike_times_index"][:].astype(np.int64)
        self.segments = np.concatenate([[0], ends])
        if len(ends) and (np.any(np.diff(self.segments) < 0) or ends[-1] != n_total):
            raise SourceError(
                f"{uri}: 'units/spike_times_index' is inconsistent (not increasing, or ends at "
                f"{ends[-1] if len(ends) else 0} while spike_times has {n_total} values)"
            )
        n_units = len(ends)
        ids = units["id"][:] if "id" in units else np.arange(n_units)
        self.unit_ids = np.asarray(ids).astype(str)
        self.unit_regions = self._regions(units, n_units)
        self.segment_units = np.arange(n_units, dtype=np.int64)
        self.heldout = units["heldout"][:].astype(bool) if "heldout" in units else None
        self.meta = SessionMeta(
            session=self._string("general/session_id") or self._string("identifier") or "session",
            subject=self._string("general/subject/subject_id") or entry.subject or "unknown",
            species=self._string("general/subject/species") or entry.species,
            task=entry.task,
        )

    def _string(self, key: str) -> str | None:
        if key not in self._h5:
            return None
        value = self._h5[key][()]
        value = value.decode() if isinstance(value, bytes) else str(value)
        return value.strip() or None

    def _regions(self, units: h5py.Group, n_units: int) -> np.ndarray:
        for col in REGION_COLUMNS:
            if col in units and units[col].shape == (n_units,):
                return decode_strings(units[col][:])
        electrodes = self._h5.get("general/extracellular_ephys/electrodes")
        if electrodes is None or "location" not in electrodes:
            return np.full(n_units, "unknown")
        locations = decode_strings(electrodes["location"][:])
        if "electrodes" in units and "electrodes_index" in units:
            ends = units["electrodes_index"][:].astype(np.int64)
            starts = np.concatenate([[0], ends[:-1]])
            rows = units["electrodes"][:].astype(np.int64)
            first = np.where(ends > starts, rows[np.minimum(starts, len(rows) - 1)], -1)
        elif "peak_channel_id" in units and "id" in electrodes:
            channel_ids = electrodes["id"][:]
            order = np.argsort(channel_ids)
            pos = np.searchsorted(channel_ids[order], units["peak_channel_id"][:])
            first = np.where(pos < len(order), order[np.minimum(pos, len(order) - 1)], -1)
        else:
            return np.full(n_units, "unknown")
        valid = (first >= 0) & (first < len(locations))
        return np.where(valid, locations[np.clip(first, 0, len(locations) - 1)], "unknown")

    def read_times(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._spike_times[start:stop], dtype=np.float64)

    def time_range(self) -> tuple[float, float]:
        nonempty = np.flatnonzero(np.diff(self.segments) > 0)
        if len(nonempty) == 0:
            return 0.0, 0.0
        firsts = self.segments[nonempty]
        lasts = self.segments[nonempty + 1] - 1
        idx = np.unique(np.concatenate([firsts, lasts]))
        values = np.asarray(self._spike_times[idx], dtype=np.float64)  # one point selection, not 2·N reads
        return float(np.nanmin(values)), float(np.nanmax(values))

    def intervals(self, name: str) -> Intervals | None:
        group = self._h5.get(f"intervals/{name}")
        if group is None:
            group = self._h5.get(f"processing/stimulus/{name}")
        if not isinstance(group, h5py.Group):
            return None
        columns = {}
        for key, ds in group.items():
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or key.endswith("_index"):
                continue
            if f"{key}_index" in group:  # ragged column: not a per-interval scalar
                continue
            values = ds[:]
            columns[key] = decode_strings(values) if values.dtype.kind in "SOU" else values
        return Intervals(name, columns) if "start_time" in columns else None

    def behavior_series(self) -> list[TimeSeries]:
        """TimeSeries under ``processing/behavior`` (directly or inside a container such as Position)."""
        module = self._h5.get("processing/behavior")
        if not isinstance(module, h5py.Group):
            return []
        found = []
        for name, obj in module.items():
            children = [(name, obj)] if "data" in obj else [(f"{name}.{k}", v) for k, v in obj.items()]
            for label, group in children:
                if isinstance(group, h5py.Group) and isinstance(group.get("data"), h5py.Dataset):
                    series = self._series(label, group)
                    if series is not None:
                        found.append(series)
        return found

    def _series(self, name: str, group: h5py.Group) -> TimeSeries | None:
        data = group["data"]
        if data.ndim not in (1, 2) or data.dtype.kind not in "biuf" or data.shape[0] == 0:
            return None
        if "timestamps" in group:
            stamps = np.asarray(group["timestamps"][:], dtype=np.float64)
        elif "starting_time" in group:
            start = group["starting_time"]
            rate = float(start.attrs.get("rate", 0.0))
            if rate <= 0:
                raise SourceError(f"{self.item}: behaviour {name!r} has starting_time but no positive rate")
            stamps = float(start[()]) + np.arange(data.shape[0]) / rate
        else:
            return None
        return TimeSeries(name, stamps, data)

    def close(self) -> None:
        h5 = getattr(self, "_h5", None)
        if h5 is not None:
            h5.close()
        if self._fh is not None:
            self._fh.close()
