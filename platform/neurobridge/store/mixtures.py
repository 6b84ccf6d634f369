"""Mixtures: a named set of dataset versions ingested together, which is what pretraining consumes.

``<store>/mixtures/<name>.json`` pins each dataset to the version the ingest produced, so a training run names
one mixture and gets exactly the data it was trained on, even after the catalog or the raw data change.
"""

from __future__ import annotations

import time
from typing import Protocol

from pydantic import BaseModel, Field

from neurobridge.config import Settings
from neurobridge.storage import StoreError, filesystem, join, read_json, safe_name, write_json_atomic
from neurobridge.store.card import DatasetCard


class Versioned(Protocol):
    """Anything naming a complete version with its card (a ``DatasetRef``, an ingest report)."""

    dataset: str
    version: str
    card: DatasetCard


class MixtureMember(BaseModel):
    dataset: str
    version: str
    kind: str | None = None
    rows: int = 0
    tokens: int = 0
    sessions: int = 0
    species: list[str] = Field(default_factory=list)
    bin_ms: float | None = Field(None, description="bin width of the rows (None: a mixture written before it was kept)")

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"


class Mixture(BaseModel):
    name: str
    created: str
    datasets: list[MixtureMember]


def write_mixture(settings: Settings, name: str, members: list[Versioned]) -> Mixture:
    """Pin ``members`` as mixture ``name``. One bin width per mixture: a model's time axis has one bin size."""
    widths = {m.dataset: m.card.bin_ms for m in members}
    if len(set(widths.values())) > 1:
        raise StoreError(
            f"mixture {name!r} would mix bin widths {widths} (ms): a model sees one bin size; ingest the entries "
            "at one bin_ms, or pin them as separate mixtures"
        )
    mixture = Mixture(
        name=name,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        datasets=[
            MixtureMember(
                dataset=m.dataset,
                version=m.version,
                kind=m.card.kind,
                rows=m.card.counts.rows,
                tokens=m.card.counts.tokens,
                sessions=m.card.counts.sessions,
                species=m.card.vocabularies.species,
                bin_ms=m.card.bin_ms,
            )
            for m in members
        ],
    )
    fs, path = filesystem(join(settings.store, "mixtures", f"{safe_name(name)}.json"), settings)
    write_json_atomic(fs, path, mixture.model_dump(mode="json"))
    return mixture


def read_mixture(settings: Settings, name: str) -> Mixture:
    fs, path = filesystem(join(settings.store, "mixtures", f"{safe_name(name)}.json"), settings)
    if not fs.exists(path):
        folder = filesystem(join(settings.store, "mixtures"), settings)
        known = sorted(p.rsplit("/", 1)[-1][:-5] for p in folder[0].glob(f"{folder[1]}/*.json"))
        raise StoreError(f"no mixture named {name!r} in {settings.store} (known: {', '.join(known) or 'none'})")
    return Mixture.model_validate(read_json(fs, path))
