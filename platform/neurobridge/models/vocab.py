"""String-keyed vocabularies for context embeddings (session, subject, task, region, dataset) and units.

Index 0 is padding and 1 is unknown, so unseen strings at evaluation time map to a learned 'unknown' row instead of
failing, and a new session at fine-tuning can be added with ``extend`` without disturbing trained rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

PAD, UNK = 0, 1
SPECIAL = ("<pad>", "<unk>")
FIELDS = ("session", "subject", "task", "region", "dataset", "unit")
GROUP_MEMO = 4096  # remembered key groups per vocabulary (sessions × unit layouts in a run: a few hundred)


def unit_key(session: str, unit_id: str) -> str:
    """A unit's vocabulary key: store unit ids are unique within a session only."""
    return f"{session}\x1f{unit_id}"


class Vocab:
    """An ordered, append-only key → index map (indices of existing keys never change)."""

    def __init__(self, keys: Iterable[str] = ()):
        self.keys: list[str] = list(SPECIAL)
        self.index: dict[str, int] = {k: i for i, k in enumerate(SPECIAL)}
        self._groups: dict[tuple, np.ndarray] = {}
        self.add(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def add(self, keys: Iterable[str]) -> list[str]:
        """Append unseen keys (sorted, so the result does not depend on arrival order); returns those added."""
        new = sorted({str(k) for k in keys} - self.index.keys())
        for k in new:
            self.index[k] = len(self.keys)
            self.keys.append(k)
        return new

    def lookup(self, keys: Iterable[str]) -> np.ndarray:
        """Indices of keys; unknown keys map to UNK (never grows the vocabulary)."""
        return np.array([self.index.get(str(k), UNK) for k in keys], dtype=np.int64)

    def lookup_group(self, group: tuple, keys: Callable[[], Iterable[str]] | None = None) -> np.ndarray:
        """``lookup(keys())`` (``lookup(group)`` without ``keys``), remembered per ``group`` (read-only result).

        A window's units and regions repeat in every window of its session; looking them up string by string in
        every batch made this per-unit Python loop the largest cost of collation, which runs beside the training
        step in the same process. The memo is keyed by the vocabulary's size, so keys added by ``extend`` are seen.
        """
        key = (len(self.keys), group)
        hit = self._groups.get(key)
        if hit is None:
            if len(self._groups) >= GROUP_MEMO:
                self._groups.clear()
            hit = self._groups[key] = self.lookup(group if keys is None else keys())
            hit.flags.writeable = False
        return hit

    def extend(self, new_keys: Iterable[str], table: nn.Embedding | None = None) -> list[str]:
        """Add keys and grow ``table`` in place: old rows are kept bit for bit, new rows start at the UNK row.

        Starting from UNK means a new session initially behaves like an unseen one, a sensible prior for
        fine-tuning. The table's Parameter is replaced, so build the optimizer after extending.
        """
        if table is not None and table.num_embeddings != len(self):
            raise ValueError(f"embedding has {table.num_embeddings} rows but the vocabulary has {len(self)} keys")
        added = self.add(new_keys)
        if table is not None and added:
            old = table.weight.data
            grown = torch.cat([old, old[UNK : UNK + 1].expand(len(added), -1).clone()], dim=0)
            table.weight = nn.Parameter(grown, requires_grad=table.weight.requires_grad)
            table.num_embeddings = len(self)
        return added

    def to_list(self) -> list[str]:
        return list(self.keys[len(SPECIAL) :])

    @classmethod
    def from_list(cls, keys: list[str]) -> Vocab:
        v = cls()
        for k in keys:  # keep the stored order exactly (indices must match the saved embedding rows)
            if k in v.index:
                raise ValueError(f"duplicate vocabulary key {k!r}")
            v.index[k] = len(v.keys)
            v.keys.append(k)
        return v


@dataclass
class Vocabularies:
    session: Vocab = field(default_factory=Vocab)
    subject: Vocab = field(default_factory=Vocab)
    task: Vocab = field(default_factory=Vocab)
    region: Vocab = field(default_factory=Vocab)
    dataset: Vocab = field(default_factory=Vocab)
    unit: Vocab = field(default_factory=Vocab)  # per-unit read-in/read-out rows (models.ndt)

    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> Vocabularies:
        """Build from store rows (dicts with the context columns and ``unit_regions``)."""
        v = cls()
        for r in rows:
            for f in ("session", "subject", "task", "dataset"):
                if r.get(f) is not None:
                    v[f].add([r[f]])
            v.region.add(r.get("unit_regions") or [])
        return v

    def __getitem__(self, name: str) -> Vocab:
        if name not in FIELDS:
            raise KeyError(f"unknown vocabulary {name!r}; expected one of {FIELDS}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {f: len(self[f]) for f in FIELDS}

    def to_dict(self) -> dict[str, list[str]]:
        return {f: self[f].to_list() for f in FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, list[str]]) -> Vocabularies:
        extra = set(data) - set(FIELDS)
        if extra:
            raise ValueError(f"unknown vocabulary fields {sorted(extra)}")
        return cls(**{f: Vocab.from_list(list(data.get(f, []))) for f in FIELDS})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Vocabularies:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a vocabulary JSON file ({e})") from e
        return cls.from_dict(data)
