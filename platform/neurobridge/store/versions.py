"""Dataset versions: content hashes of what decides the rows, and how readers name and find complete versions.

Layout of ``<store>/tokens/<dataset>/<version>/``: ``part-<item>.parquet`` (rows), side tables in sub-folders
(``units/``, …), ``_items/<item>.json`` (one status record per item), ``_manifest.parquet`` (all records) and
``_dataset.json`` (the card, written last; a version without it does not exist for readers).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Protocol

from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings
from neurobridge.storage import StoreError, filesystem, join, safe_name
from neurobridge.store.card import CARD, DatasetCard, read_card
from neurobridge.store.schema import ALGORITHM_VERSION, SCHEMA_VERSION


class Fingerprinted(Protocol):
    """A source item as versions see it: where it sits below the entry and what its listing says about it."""

    rel: str
    fingerprint: str


def dataset_version(entry: CatalogEntry, items: list[Fingerprinted]) -> str:
    """Content hash of what determines the rows: sources, their fingerprints and the entry's row settings."""
    spec = {
        "schema": SCHEMA_VERSION,
        "algorithm": ALGORITHM_VERSION,
        **entry.version_spec(),
        "items": sorted((i.rel, i.fingerprint) for i in items),
    }
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return "v-" + hashlib.sha256(blob).hexdigest()[:12]


def version_dir(settings: Settings, dataset: str, version: str) -> str:
    return join(settings.store, "tokens", safe_name(dataset), safe_name(version))


@dataclass
class DatasetRef:
    """A complete dataset version: its name, version, folder URI and card."""

    dataset: str
    version: str
    path: str
    card: DatasetCard

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"


def list_versions(settings: Settings, dataset: str) -> list[DatasetRef]:
    """Complete versions of a dataset (those with a card), oldest first."""
    base = join(settings.store, "tokens", safe_name(dataset))
    fs, path = filesystem(base, settings)
    if not fs.exists(path):
        return []
    refs = []
    for d in fs.ls(path, detail=False):
        name = d.rstrip("/").rsplit("/", 1)[-1]
        card_path = f"{d.rstrip('/')}/{CARD}"
        if name.startswith("v-") and fs.exists(card_path):
            refs.append(DatasetRef(dataset, name, join(base, name), read_card(fs, card_path)))
    return sorted(refs, key=lambda r: (r.card.created, r.version))


def resolve_dataset(settings: Settings, ref: str) -> DatasetRef:
    """``name`` (newest complete version) or ``name@version``."""
    name, _, version = ref.partition("@")
    try:
        safe_name(name)
        if version:
            safe_name(version)
    except StoreError as err:
        raise StoreError(f"dataset reference {ref!r}: {err}") from None
    versions = list_versions(settings, name)
    if not versions:
        raise StoreError(f"no complete version of dataset {name!r} in {settings.store} (run `neurobridge ingest`)")
    if not version:
        return versions[-1]
    for r in versions:
        if r.version == version:
            return r
    raise StoreError(f"dataset {name!r} has no complete version {version!r}; have: {[r.version for r in versions]}")
