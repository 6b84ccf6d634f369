"""Rows of the token store as Python records: Arrow batches → rows (without Python lists per cell), rows grouped by
session, and rows stacked into arrays.

Each row's values are a NumPy view into the batch's flattened list column, so a batch of windows is converted in
one pass over rows, never over cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from neurobridge.config import Settings
from neurobridge.store.read import Source, iter_local

# The columns a model reads, by what they say: context, the window's place, the cell grid, labels, behaviour.
CONTEXT_COLUMNS = ["dataset", "session", "subject", "task", "sample_id", "split"]
GRID_COLUMNS = ["n_units", "n_bins", "counts", "mua", "unit_ids", "unit_regions"]
ROW_COLUMNS = [
    *CONTEXT_COLUMNS,
    "t_start",
    "bin_ms",
    *GRID_COLUMNS,
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
    """Rows as dicts (held-out unit flags are added by ``store.splits.HeldoutSplit``)."""
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


EVAL_COLUMNS = [c for c in ROW_COLUMNS if c not in ("stimulus_id", "repeat")]


@dataclass
class SessionRows:
    dataset: str
    session: str
    rows: dict[str, list[dict]] = field(default_factory=dict)  # split → rows

    def split(self, name: str) -> list[dict]:
        return self.rows.get(name, [])


def session_rows(
    settings: Settings,
    src: Source,
    splits: tuple[str, ...],
    sessions: set[str] | None = None,
    max_sessions: int | None = None,
) -> list[SessionRows]:
    """Rows of the given splits grouped by session (only ``sessions`` when given; the first ``max_sessions``)."""
    out: dict[str, SessionRows] = {}
    for batch in iter_local(settings, src, None, EVAL_COLUMNS):
        for row in table_rows(pa.Table.from_batches([batch])):
            s = row["session"]
            if row["split"] not in splits or (sessions is not None and s not in sessions):
                continue
            if s not in out:
                if max_sessions is not None and len(out) >= max_sessions:
                    continue
                out[s] = SessionRows(src.name, s)
            out[s].rows.setdefault(row["split"], []).append(row)
    return list(out.values())


def stack_counts(rows: list[dict]) -> np.ndarray:
    """[windows, bins, units] spike counts (float64), bins cropped to the shortest window of the session."""
    T = min(int(r["n_bins"]) for r in rows)
    return np.stack(
        [np.asarray(r["counts"], dtype=np.float64).reshape(int(r["n_units"]), int(r["n_bins"]))[:, :T].T for r in rows]
    )


def stack_behavior(rows: list[dict]) -> np.ndarray | None:
    """[windows, bins, behaviour variables] or None when the rows carry none."""
    if not rows or rows[0].get("behavior") is None or not rows[0].get("behavior_names"):
        return None
    T = min(int(r["n_bins"]) for r in rows)
    k = len(rows[0]["behavior_names"])
    return np.stack([np.asarray(r["behavior"], dtype=np.float64).reshape(int(r["n_bins"]), k)[:T] for r in rows])
