"""Readers for raw recording formats, one module per kind; the registry maps catalog kinds to them."""

from __future__ import annotations

from importlib import import_module

from ..catalog import CatalogEntry
from ..config import Settings
from .base import Item, SourceError, SpikeSource

READERS = {"nwb": "nwb", "alf": "alf"}  # catalog kind → module in this package


def _reader(entry: CatalogEntry):
    if entry.kind not in READERS:
        raise SourceError(f"catalog entry {entry.name!r}: kind {entry.kind!r} has no spike reader in this release")
    return import_module(f"{__name__}.{READERS[entry.kind]}")


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    """List the items of a catalog entry (listing only: no recording is opened)."""
    return _reader(entry).discover(entry, settings)


def open_source(entry: CatalogEntry, item: Item, settings: Settings) -> SpikeSource:
    module = _reader(entry)
    if entry.kind == "nwb":
        return module.NWBSource(item.uri, entry, settings)
    if entry.one is not None and entry.one.mode == "remote":
        _download_one(entry, item, settings)
    root = None if entry.one is not None else entry.resolved_uri(settings)
    return module.ALFSource(item.uri, entry, settings, root_uri=root)


def _download_one(entry: CatalogEntry, item: Item, settings: Settings) -> None:
    """Fetch the ALF objects an item needs into the ONE cache (users online; tests use local mode)."""
    from .alf import _one

    one = _one(entry, settings)
    eid, collection = item.extra["eid"], item.extra["collection"]
    for obj, coll in (("spikes", collection), ("clusters", collection), ("trials", "alf")):
        try:
            one.load_object(eid, obj, collection=coll, download_only=True)
        except Exception as err:  # ONE raises its own ALFObjectNotFound for absent objects
            if obj == "spikes":
                raise SourceError(f"{item.uri}: ONE could not download {obj} ({err})") from None


__all__ = ["Item", "SourceError", "SpikeSource", "discover", "open_source"]
