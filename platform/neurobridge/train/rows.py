"""Arrow batches from the token store → row dicts for ``models.patching.collate``, without Python lists per cell.

Each row's values are a NumPy view into the batch's flattened list column, so a batch of windows is converted in
one pass over rows, never over cells.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

ROW_COLUMNS = [
    "dataset",
    "session",
    "subject",
    "task",
    "sample_id",
    "split",
    "t_start",
    "bin_ms",
    "n_units",
    "n_bins",
    "counts",
    "mua",
    "unit_ids",
    "unit_regions",
    "behavior",
    "behavior_names",
    "stimulus_id",
    "repeat",
]


def _views(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count == len(column):
        return [None] * len(column)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    base = offsets[0]
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [flat[offsets[i] - base : offsets[i + 1] - base] if valid[i] else None for i in range(len(column))]


def table_rows(table: pa.Table) -> list[dict]:
    """Rows as dicts (held-out unit flags are added by ``train.batches.HeldoutSplit``)."""
    n = table.num_rows
    cols = set(table.column_names)
    counts = _views(table.column("counts")) if "counts" in cols else [None] * n
    mua = _views(table.column("mua")) if "mua" in cols else [None] * n
    behavior = _views(table.column("behavior")) if "behavior" in cols else [None] * n
    scalars = {
        c: table.column(c).to_pylist() for c in ROW_COLUMNS if c in cols and c not in ("counts", "mua", "behavior")
    }
    rows = []
    for i in range(n):
        row = {c: v[i] for c, v in scalars.items()}
        row["counts"], row["mua"], row["behavior"] = counts[i], mua[i], behavior[i]
        rows.append(row)
    return rows
