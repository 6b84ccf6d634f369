"""Unit vocabularies: namespaced ids, region labels, and the region order that makes patches region-pure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from neurobridge.catalog import CatalogEntry
from neurobridge.store.schema import UNITS_SCHEMA


@dataclass
class UnitVocab:
    order: np.ndarray  # storage unit index → row in the token grid
    unit_ids: list[str]  # namespaced, in grid order
    regions: list[str]  # in grid order


def unit_vocab(entry: CatalogEntry, session: str, raw_ids: np.ndarray, raw_regions: np.ndarray) -> UnitVocab:
    regions = np.array([_region(r, entry.region_map) for r in raw_regions], dtype=object).astype(str)
    ids = np.asarray(raw_ids).astype(str)
    numeric = np.array([_as_number(i) for i in ids])
    grid = np.lexsort((ids, numeric, regions))  # by region, then numerically by unit id
    order = np.empty(len(grid), dtype=np.int64)
    order[grid] = np.arange(len(grid))
    return UnitVocab(
        order=order,
        unit_ids=[f"{entry.name}/{session}/{i}" for i in ids[grid]],
        regions=[str(r) for r in regions[grid]],
    )


def units_table(dataset: str, session: str, vocab: UnitVocab, raw_ids, heldout: np.ndarray | None = None) -> pa.Table:
    """The ``units/`` side table of one session in token-grid order (``raw_ids``/``heldout`` in storage order).

    Every dataset with units writes one, spike times or binned counts alike: pretraining gives each unit listed here
    its own read-in/read-out rows, and a unit left out would share the one 'unknown' row with all the others.
    """
    grid_to_storage = np.argsort(vocab.order)
    n = len(vocab.unit_ids)
    flags = np.asarray(heldout)[grid_to_storage].tolist() if heldout is not None else [None] * n
    return pa.table(
        {
            "dataset": pa.array([dataset] * n, pa.string()),
            "session": pa.array([session] * n, pa.string()),
            "unit_id": pa.array(vocab.unit_ids, pa.string()),
            "raw_id": pa.array(np.asarray(raw_ids)[grid_to_storage].astype(str).tolist(), pa.string()),
            "index": pa.array(np.arange(n, dtype=np.int32)),
            "region": pa.array(vocab.regions, pa.string()),
            "heldout": pa.array(flags, pa.bool_()),
        },
        schema=UNITS_SCHEMA,
    )


def _region(label, region_map: dict[str, str]) -> str:
    text = str(label).strip() if label is not None else ""
    text = region_map.get(text, text)
    return text if text and text.lower() not in {"nan", "none", "null"} else "unknown"


def _as_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")
