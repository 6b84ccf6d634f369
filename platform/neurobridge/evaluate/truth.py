"""The simulator's ground truth for evaluation: true rates cut to the same windows as the store's rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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
