"""NWB (DANDI, NLB, Allen Visual Coding) sessions read lazily with h5py from any fsspec URI.

pynwb builds the whole object graph and reads eagerly; ingest needs only the units table, a few metadata
fields and one intervals table, so it reads the HDF5 layout that the NWB schema fixes, slice by slice.
"""

from __future__ import annotations

import posixpath

import h5py
import numpy as np

from neurobridge.catalog import CatalogEntry, NwbEntry, NwbOptions, UnitRule
from neurobridge.config import Settings
from neurobridge.sources.base import (
    Intervals,
    Item,
    SessionMeta,
    SourceError,
    SpikeSource,
    TimeSeries,
    decode_strings,
    glob_under,
    make_items,
    register,
)
from neurobridge.sources.io import ecephys_cache
from neurobridge.storage import filesystem, is_local_fs

DEFAULT_OPTIONS = NwbOptions()


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    if entry.dandi is not None and entry.dandi.resolve == "api":
        from neurobridge.sources.io.dandi import discover_dandi

        return discover_dandi(entry)
    root = entry.resolved_uri(settings)
    cache = entry.nwb.cache if entry.nwb else None
    if cache is not None:
        items = ecephys_cache.discover(entry, cache, settings)
        if items is not None:
            return items
    fs, path = filesystem(root, settings)
    if path.endswith(".nwb") and fs.isfile(path):
        files, base = [path], posixpath.dirname(path)
    else:
        files = glob_under(fs, root, path, entry.selection.include or ["**/*.nwb"], ".nwb")
        base = path
    return make_items(fs, root, base, files, entry.selection.exclude, entry.selection.limit)


def open_item(entry: CatalogEntry, item: Item, settings: Settings) -> NWBSource:
    meta = item.extra.get("meta") or {}
    if meta.get("missing"):
        raise SourceError(f"{item.uri}: listed in the session table ({meta.get('listed_in')}) but no such file")
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
        opts = entry.nwb or DEFAULT_OPTIONS
        ids = units["id"][:] if "id" in units else np.arange(n_units)
        keep, self.stats = self._unit_filter(units, n_units, entry.ingest.unit_filter)
        self.unit_ids = np.asarray(ids).astype(str)[keep]
        self.unit_regions = self._regions(units, n_units, opts)[keep]
        # segments of filtered-out units point nowhere (-1): the engine skips their spikes
        self.segment_units = np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int64)
        self.heldout = units["heldout"][:].astype(bool)[keep] if "heldout" in units else None
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

    def _column(self, table: h5py.Group, col: str, n: int, where: str) -> np.ndarray:
        """A per-row scalar column of a DynamicTable (ragged columns are refused)."""
        ds = table[col]
        if not isinstance(ds, h5py.Dataset) or ds.shape != (n,) or f"{col}_index" in table:
            shape = getattr(ds, "shape", None)
            raise SourceError(f"{self.item}: '{where}/{col}' is not one value per row (shape {shape}, {n} rows)")
        return ds[:]

    def _unit_filter(self, units: h5py.Group, n_units: int, rules: dict[str, UnitRule]) -> tuple[np.ndarray, dict]:
        """Units passing every configured rule, and what each rule removed (a unit may fail several)."""
        keep = np.ones(n_units, dtype=bool)
        if not rules:
            return keep, {}
        removed, skipped = {}, []
        for col, rule in rules.items():
            if col not in units:
                if rule.optional:
                    skipped.append(col)
                    continue
                have = sorted(k for k in units if not k.endswith("_index"))
                raise SourceError(
                    f"{self.item}: ingest.unit_filter names column {col!r}, which the units table does not have "
                    f"(columns: {', '.join(have)}); set optional: true on the rule to skip it where it is absent"
                )
            passed = _passes(self._column(units, col, n_units, "units"), rule, f"{self.item}: units/{col}")
            removed[col] = int((~passed).sum())
            keep &= passed
        report = {"units_in_file": n_units, "units_kept": int(keep.sum()), "removed_by": removed}
        if skipped:
            report["skipped_rules"] = skipped
        return keep, {"unit_filter": report}

    def _regions(self, units: h5py.Group, n_units: int, opts: NwbOptions) -> np.ndarray:
        """Per-unit region label: a units-table column, else the electrodes table through each unit's peak
        channel id (Allen), else through the unit's first ``electrodes`` row (DANDI/NLB)."""
        for col in opts.region_columns:
            ds = units.get(col)
            if isinstance(ds, h5py.Dataset) and ds.shape == (n_units,) and f"{col}_index" not in units:
                return decode_strings(ds[:])
        unknown = np.full(n_units, "unknown")
        electrodes = self._h5.get("general/extracellular_ephys/electrodes")
        if not isinstance(electrodes, h5py.Group):
            return unknown
        label = next((c for c in opts.region_columns if c in electrodes), None)
        if label is None:
            return unknown
        n_rows = len(electrodes[label])
        labels = decode_strings(self._column(electrodes, label, n_rows, "general/extracellular_ephys/electrodes"))
        peak = opts.peak_channel_column
        if peak in units:
            channel_ids = electrodes["id"][:] if "id" in electrodes else np.arange(n_rows)
            rows = self._rows_of_channels(channel_ids, self._column(units, peak, n_units, "units"), peak)
        elif "electrodes" in units and "electrodes_index" in units:
            ends = units["electrodes_index"][:].astype(np.int64)
            starts = np.concatenate([[0], ends[:-1]])
            refs = units["electrodes"][:].astype(np.int64)
            rows = np.where(ends > starts, refs[np.minimum(starts, max(len(refs) - 1, 0))], -1)
        else:
            return unknown
        valid = (rows >= 0) & (rows < n_rows)
        return np.where(valid, labels[np.clip(rows, 0, max(n_rows - 1, 0))], "unknown")

    def _rows_of_channels(self, channel_ids: np.ndarray, wanted: np.ndarray, column: str) -> np.ndarray:
        """Electrodes-table row of each channel id; an id that is not in the table is an error, not a guess."""
        if len(channel_ids) == 0:
            raise SourceError(f"{self.item}: units/{column} names channels but the electrodes table is empty")
        order = np.argsort(channel_ids, kind="stable")
        pos = np.clip(np.searchsorted(channel_ids[order], wanted), 0, len(order) - 1)
        found = channel_ids[order][pos] == wanted
        if not found.all():
            bad = np.flatnonzero(~found)
            raise SourceError(
                f"{self.item}: units/{column} of {len(bad)} unit(s) names channels that are not in the electrodes "
                f"table (first: unit row {bad[0]} → channel {wanted[bad[0]]})"
            )
        return order[pos]

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

    def interval_names(self) -> list[str]:
        """Intervals tables this file has, for error messages."""
        names = []
        for where in ("intervals", "processing/stimulus"):
            group = self._h5.get(where)
            if isinstance(group, h5py.Group):
                names += [k for k, v in group.items() if isinstance(v, h5py.Group) and "start_time" in v]
        return sorted(names)

    def close(self) -> None:
        h5 = getattr(self, "_h5", None)
        if h5 is not None:
            h5.close()
        if self._fh is not None:
            self._fh.close()


def _passes(values: np.ndarray, rule: UnitRule, where: str) -> np.ndarray:
    """Units whose value satisfies the rule; NaN fails numeric bounds (as in allensdk's filters)."""
    text = values.dtype.kind in "SOU"
    if text and (rule.min is not None or rule.max is not None):
        raise SourceError(f"{where} holds text, so the unit_filter rule's min/max cannot apply (use one_of)")
    if text:
        allowed = [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in rule.one_of or []]
        return np.isin(decode_strings(values), allowed)
    v = values.astype(np.float64)
    ok = np.ones(len(v), dtype=bool)
    with np.errstate(invalid="ignore"):
        if rule.min is not None:
            ok &= v >= rule.min
        if rule.max is not None:
            ok &= v <= rule.max
    if rule.one_of is not None:
        numbers = []
        for x in rule.one_of:
            try:
                numbers.append(float(x))
            except ValueError:
                raise SourceError(f"{where} is numeric but the unit_filter rule lists {x!r}") from None
        ok &= np.isin(v, numbers)
    return ok


READER = register(NwbEntry, discover, open_item)
