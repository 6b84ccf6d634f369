"""Unit vocabularies: namespaced ids, region labels, and the region order that makes patches region-pure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurobridge.catalog import CatalogEntry


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


def _region(label, region_map: dict[str, str]) -> str:
    text = str(label).strip() if label is not None else ""
    text = region_map.get(text, text)
    return text if text and text.lower() not in {"nan", "none", "null"} else "unknown"


def _as_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")
