"""Windows → rows of the store's sample schema (one row per window), built column-wise in Arrow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurobridge.config import Settings
from neurobridge.sources.base import SessionMeta
from neurobridge.storage import filesystem, join, open_atomic
from neurobridge.store.schema import SAMPLE_SCHEMA


@dataclass
class WindowBatch:
    """Windows of one session ready to be written: ``values`` [W, U, B] in the token grid's unit order, integer
    counts (→ ``counts``, uint16) or floats (→ ``mua``); per-window arrays have W entries."""

    meta: SessionMeta
    unit_ids: list[str]  # namespaced, grid order
    regions: list[str]  # grid order
    sample_ids: list[str]
    split: np.ndarray
    t_start: np.ndarray
    bin_s: float
    values: np.ndarray
    stimulus_id: np.ndarray | None = None
    repeat: np.ndarray | None = None
    behavior: np.ndarray | None = None  # [W, B, K] float32
    behavior_names: list[str] | None = None


def _lists(flat: pa.Array, n: int, per_row: int) -> pa.Array:
    offsets = pa.array(np.arange(n + 1, dtype=np.int64) * per_row, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, flat)


def _behavior_columns(b: WindowBatch, n: int, n_bins: int) -> tuple[pa.Array, pa.Array]:
    if b.behavior is None:
        return pa.nulls(n, pa.list_(pa.float32())), pa.nulls(n, pa.list_(pa.string()))
    k = b.behavior.shape[2]
    values = _lists(pa.array(np.ascontiguousarray(b.behavior, dtype=np.float32).reshape(-1)), n, n_bins * k)
    names = _lists(pa.array(list(b.behavior_names or []) * n, type=pa.string()), n, k)
    return values, names


def rows_table(dataset: str, b: WindowBatch) -> pa.Table:
    """The rows of ``b`` in the sample schema."""
    n, n_units, n_bins = b.values.shape

    def const(value, type_=pa.string()):
        return pa.array([value] * n, type=type_)

    is_mua = b.values.dtype.kind == "f"
    cells = _lists(pa.array(b.values.reshape(-1)), n, n_units * n_bins)
    behavior, behavior_names = _behavior_columns(b, n, n_bins)
    columns = {
        "dataset": const(dataset),
        "session": const(b.meta.session),
        "subject": const(b.meta.subject),
        "species": const(b.meta.species),
        "task": const(b.meta.task),
        "sample_id": pa.array(b.sample_ids, type=pa.string()),
        "split": pa.array(np.asarray(b.split).astype(str)),
        "t_start": pa.array(np.asarray(b.t_start, dtype=np.float64)),
        "bin_ms": const(b.bin_s * 1000.0, pa.float32()),
        "n_units": const(n_units, pa.int32()),
        "n_bins": const(n_bins, pa.int32()),
        "counts": pa.nulls(n, pa.list_(pa.uint16())) if is_mua else cells,
        "mua": cells.cast(pa.list_(pa.float32())) if is_mua else pa.nulls(n, pa.list_(pa.float32())),
        "unit_ids": _lists(pa.concat_arrays([pa.array(b.unit_ids, type=pa.string())] * n), n, n_units),
        "unit_regions": _lists(pa.concat_arrays([pa.array(b.regions, type=pa.string())] * n), n, n_units),
        "stimulus_id": pa.array(b.stimulus_id if b.stimulus_id is not None else [None] * n, type=pa.string()),
        "repeat": pa.array(b.repeat if b.repeat is not None else [None] * n, type=pa.int32()),
        "behavior": behavior,
        "behavior_names": behavior_names,
    }
    return pa.table(columns, schema=SAMPLE_SCHEMA)


def write_units(table: pa.Table, vdir: str, key: str, settings: Settings) -> int:
    """``<vdir>/units/part-<key>.parquet``, committed atomically after the item's rows; returns its row count."""
    fs, path = filesystem(join(vdir, "units", f"part-{key}.parquet"), settings)
    with open_atomic(fs, path) as f:
        pq.write_table(table, f, compression="zstd")
    return table.num_rows
