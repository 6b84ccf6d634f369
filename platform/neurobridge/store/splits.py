"""Deterministic splits: windows into train/val/test, and units into held-in/held-out.

Both are salted hashes of stable keys (a stimulus id, a window name, a session and unit id), so they never depend
on order, on which other data are loaded, or on the machine: ingest, training, fine-tuning and evaluation agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from neurobridge.catalog import SplitConfig
from neurobridge.store.read import unit_columns

SPLITS = ("train", "val", "test")


def hash_split(keys, val_fraction: float, test_fraction: float, salt: str) -> np.ndarray:
    u = np.array(
        [int.from_bytes(hashlib.blake2b(f"{salt}|{k}".encode(), digest_size=8).digest(), "big") / 2**64 for k in keys]
    )
    return np.where(u < test_fraction, "test", np.where(u < test_fraction + val_fraction, "val", "train"))


def assign_splits(official, keys: np.ndarray, rule: SplitConfig) -> np.ndarray:
    """Each window's split. ``official``: the source's own split per window (None: it has none); ``keys``: what must
    never straddle two splits (an image, a segment). Official test/val windows stay; val is carved out of official
    train windows by hashing their keys; without an official split every window is hashed into train/val/test."""
    if official is None:
        return hash_split(keys, rule.val_fraction, rule.test_fraction, rule.salt)
    out = np.asarray(official).astype(str).astype(object)
    carve = out == "train"
    if carve.any():
        out[carve] = hash_split(np.asarray(keys)[carve], rule.val_fraction, 0.0, rule.salt)
    return out.astype(str)


HELDOUT_FRACTION = 0.25
LAYOUT_MEMO = 4096  # remembered (session, unit layout) flag arrays; a run has a few hundred


def hash_fraction(session: str, unit: str) -> float:
    digest = hashlib.blake2b(f"{session}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class HeldoutSplit:
    """session → unit id → held-out flag: official flags where given (any True), else ``fraction`` by hash.

    The hash rule is stable across runs, machines and unit order, and a session's split never depends on which
    other sessions are loaded, so training, fine-tuning and evaluation all agree on it.
    """

    def __init__(self, official: Mapping[str, Mapping[str, bool]] | None = None, fraction: float = HELDOUT_FRACTION):
        self.official = {s: dict(f) for s, f in (official or {}).items() if any(f.values())}
        self.fraction = fraction
        self._cache: dict[str, dict[str, bool]] = {}
        self._layouts: dict[tuple, np.ndarray] = {}

    def flags(self, session: str, unit_ids) -> np.ndarray:
        """Held-out flag of each unit id (read-only), remembered per session and unit layout: every window of a
        session repeats it, and a per-unit Python loop in every batch is collation's largest cost."""
        key = (session, tuple(unit_ids))
        hit = self._layouts.get(key)
        if hit is None:
            if len(self._layouts) >= LAYOUT_MEMO:
                self._layouts.clear()
            hit = self._layouts[key] = self._flags(session, key[1])
            hit.flags.writeable = False
        return hit

    def _flags(self, session: str, unit_ids: tuple) -> np.ndarray:
        table = self.official.get(session)
        if table is None:
            table = self._cache.setdefault(session, {})
            missing = [u for u in unit_ids if u not in table]
            for u in missing:
                table[u] = hash_fraction(session, u) < self.fraction
            if missing and not any(table.values()) and len(table) >= 2:
                table[min(table, key=lambda u: hash_fraction(session, u))] = True  # at least one held-out unit
        return np.fromiter((table.get(u, False) for u in unit_ids), dtype=bool, count=len(unit_ids))

    def to_dict(self) -> dict:
        return {"official": self.official, "fraction": self.fraction}

    @classmethod
    def from_dict(cls, d: dict) -> HeldoutSplit:
        return cls(d.get("official"), d.get("fraction", HELDOUT_FRACTION))


def heldout_flags(settings, srcs) -> dict[str, dict[str, bool]]:
    """session → unit id → held-out flag, from the ``units/`` side tables (NLB's official split when present)."""
    return {
        sess: {u: bool(f) for u, f in flags.items()}
        for s in srcs
        for sess, flags in unit_columns(settings, s, "heldout").items()
    }


def with_heldout(rows: list[dict], split: HeldoutSplit | None) -> list[dict]:
    if split is None:
        return rows
    for r in rows:
        if r.get("unit_ids") is not None and r.get("session") is not None:
            r["heldout"] = split.flags(r["session"], r["unit_ids"])
    return rows
