"""Readers for raw recording formats, one module per kind; the registry maps catalog kinds to them."""

from __future__ import annotations

from ..catalog import CatalogEntry
from ..config import Settings
from .base import Item, SourceError, SpikeSource


def discover(entry: CatalogEntry, settings: Settings) -> list[Item]:
    """List the items of a catalog entry (listing only: no recording is opened)."""
    if entry.kind == "nwb":
        from .nwb import discover as nwb_discover

        return nwb_discover(entry, settings)
    if entry.kind == "alf":
        from .alf import discover as alf_discover

        return alf_discover(entry, settings)
    raise SourceError(f"catalog entry {entry.name!r}: kind {entry.kind!r} has no spike reader in this release")


def open_source(entry: CatalogEntry, item: Item, settings: Settings) -> SpikeSource:
    if entry.kind == "nwb":
        from .nwb import NWBSource

        return NWBSource(item.uri, entry, settings)
    if entry.kind == "alf":
        from .alf import ALFSource

        if entry.one is not None and entry.one.mode == "remote":
            _download_one(entry, item, settings)
        root = None if entry.one is not None else entry.resolved_uri(settings)
        return ALFSource(item.uri, entry, settings, root_uri=root)
    raise SourceError(f"catalog entry {entry.name!r}: kind {entry.kind!r} has no spike reader in this release")


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
