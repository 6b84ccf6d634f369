"""Readers for raw recording formats, one module per kind; the registry maps catalog kinds to them."""

from __future__ import annotations

from importlib import import_module

from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings
from neurobridge.sources.base import BinnedSource, Item, SourceError, SpikeSource, WindowBlock

# catalog kind → module in this package; each module has discover(entry, settings) -> list[Item] and
# open_item(entry, item, settings) -> SpikeSource | BinnedSource
READERS = {"nwb": "nwb", "alf": "alf", "tvsd": "tvsd", "pile": "pile"}


def _reader(entry: CatalogEntry):
    if entry.kind not in READERS:
        raise SourceError(f"catalog entry {entry.name!r}: kind {entry.kind!r} has no reader")
    return import_module(f"{__name__}.{READERS[entry.kind]}")


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    """List the items of a catalog entry (listing only: no recording is opened)."""
    return _reader(entry).discover(entry, settings)


def open_source(entry: CatalogEntry, item: Item, settings: Settings) -> SpikeSource | BinnedSource:
    return _reader(entry).open_item(entry, item, settings)


__all__ = ["BinnedSource", "Item", "SourceError", "SpikeSource", "WindowBlock", "discover", "open_source"]
