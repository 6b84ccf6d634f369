"""Readers for raw recording formats: one file per catalog kind (``sources/<kind>.py``), which declares the entry
model it reads (its options) and registers itself; shared I/O helpers live in ``sources/io/``."""

from __future__ import annotations

from importlib import import_module

from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings
from neurobridge.sources.base import READERS, BinnedSource, Item, Reader, SourceError, SpikeSource, WindowBlock


def reader(kind: str) -> Reader:
    """The reader of ``kind``: the module ``sources/<kind>.py``, imported on first use (each pulls its own
    dependencies, e.g. datalad for TVSD, only when that kind is ingested)."""
    if kind not in READERS:
        try:
            import_module(f"{__name__}.{kind}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{kind}":
                raise
    if kind not in READERS:
        raise SourceError(f"catalog kind {kind!r} has no reader (sources/{kind}.py registering it)")
    return READERS[kind]


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    """List the items of a catalog entry (listing only: no recording is opened). Any failure to reach the source
    (server down, login refused, bucket missing) is this entry's ``SourceError``, so in a multi-source ingest the
    entry fails alone, with its reason, and the others go on."""
    try:
        return reader(entry.kind).discover(entry, settings)
    except SourceError:
        raise
    except Exception as err:
        raise SourceError(
            f"catalog entry {entry.name!r}: listing its items failed: {type(err).__name__}: {err}"
        ) from None


def open_source(entry: CatalogEntry, item: Item, settings: Settings) -> SpikeSource | BinnedSource:
    return reader(entry.kind).open_item(entry, item, settings)


__all__ = ["BinnedSource", "Item", "Reader", "SourceError", "SpikeSource", "WindowBlock", "discover", "open_source"]
