"""A session's windows from the token store, grouped for evaluation, plus the simulator's ground truth for them.

Evaluation works per session (held-out units, smoothing GLMs and behaviour decoders are session-specific), so rows
are read with only the columns it needs and grouped by session; truth rates are cut to the same windows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from neurobridge.config import Settings
from neurobridge.data.store import Source, iter_local
from neurobridge.train.rows import table_rows

EVAL_COLUMNS = [
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
]


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


class Truth:
    """The simulator's true rates (``truth/<session>/rates.npy`` in Hz, [units, steps]) cut to store windows."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def has(self, session: str) -> bool:
        return (self.root / session / "rates.npy").exists()

    def expected_counts(self, session: str, rows: list[dict], raw_ids: dict[str, str]) -> np.ndarray:
        """[windows, bins, units] expected counts per bin for ``rows`` (NaN where the truth does not cover)."""
        folder = self.root / session
        info = json.loads((folder / "units.json").read_text())
        rates = np.load(folder / "rates.npy", mmap_mode="r", allow_pickle=False)
        dt = float(info["bin_ms"]) / 1000.0
        index = {str(u): i for i, u in enumerate(info["unit_ids"])}
        unit_ids = list(rows[0]["unit_ids"])
        try:
            cols = np.array([index[str(raw_ids.get(u, u))] for u in unit_ids])
        except KeyError as err:
            raise ValueError(f"{folder}: unit {err.args[0]} of session {session} is not in the truth") from None
        T = int(rows[0]["n_bins"])
        out = np.full((len(rows), T, len(unit_ids)), np.nan)
        for w, r in enumerate(rows):
            bin_s = float(r["bin_ms"]) / 1000.0
            f = int(round(bin_s / dt))
            if f < 1 or abs(f * dt - bin_s) > 1e-9:
                raise ValueError(f"{folder}: bin {bin_s}s is not a multiple of the truth step {dt}s")
            i0 = int(round((float(r["t_start"]) - float(info.get("t0", 0.0))) / dt))
            i1 = i0 + T * f
            if i0 < 0 or i1 > rates.shape[1]:
                continue
            seg = np.asarray(rates[cols, i0:i1], dtype=np.float64).reshape(len(cols), T, f).sum(axis=-1) * dt
            out[w] = seg.T
        return out


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
