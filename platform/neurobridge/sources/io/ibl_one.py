"""IBL sessions through ONE (``one-api``): items from ONE's session and dataset tables, and the ALF objects an item
needs fetched into ONE's cache before it is read.

``mode: local`` reads a cache directory (a cache on object storage is used through a local copy of its small
cache tables); otherwise ONE talks to its server (``base_url``) and downloads into the cache. The ALF files
themselves are then read like any other ALF folder (``sources/alf.py``).
"""

from __future__ import annotations

import fnmatch
import posixpath

from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings
from neurobridge.sources.base import Item, SourceError, item_key
from neurobridge.storage import filesystem


def one_client(entry: CatalogEntry, settings: Settings):
    """A ONE instance; a cache on object storage is used through a local copy of its (small) cache tables."""
    from one.api import ONE

    cfg = entry.one
    cache_dir = entry.resolved_uri(settings)
    if "://" in cache_dir:
        if cfg.mode != "local":
            raise SourceError(f"{cache_dir}: a remote ONE cache needs one.mode 'local' (ONE downloads to local disks)")
        cache_dir = _local_tables(cache_dir, settings)
    if cfg.mode == "local":
        return ONE(mode="local", cache_dir=cache_dir)
    return ONE(base_url=cfg.base_url, cache_dir=cache_dir, silent=True)


def _local_tables(uri: str, settings: Settings) -> str:
    import tempfile

    fs, path = filesystem(uri, settings)
    tables = fs.glob(posixpath.join(path, "*.pqt"))
    if not tables:
        raise SourceError(f"{uri}: no ONE cache tables (sessions.pqt, datasets.pqt) found")
    local = tempfile.mkdtemp(prefix="nb-one-")
    for t in tables:
        fs.get(t, posixpath.join(local, posixpath.basename(t)))
    return local


def discover_sessions(entry: CatalogEntry, settings: Settings) -> list[Item]:
    """Items from ONE's session and dataset tables: one per session and spike-sorting collection."""
    one = one_client(entry, settings)
    root = entry.resolved_uri(settings)
    eids, sessions = one.search(details=True, **entry.one.search)
    items = []
    for eid, info in zip(eids, sessions, strict=True):
        eid = str(eid)
        session_rel = f"{info['lab']}/Subjects/{info['subject']}/{info['date']}/{int(info['number']):03d}"
        datasets = one.list_datasets(eid, details=True)
        if datasets is None or len(datasets) == 0:
            continue
        for _, row in datasets.reset_index().iterrows():
            rel_path = str(row["rel_path"]).replace("\\", "/")
            if posixpath.basename(rel_path) != "spikes.times.npy":
                continue
            collection = posixpath.dirname(rel_path)
            if entry.one.collection and not fnmatch.fnmatchcase(collection, entry.one.collection):
                continue
            rel = posixpath.join(session_rel, collection)
            items.append(
                Item(
                    key=item_key(rel),
                    uri=_under(root, rel),
                    rel=rel,
                    fingerprint=f"{row.get('file_size', '')}:{row.get('hash', '')}",
                    extra={"eid": eid, "collection": collection},
                )
            )
    items.sort(key=lambda i: i.rel)
    return items[: entry.selection.limit] if entry.selection.limit else items


def download_item(entry: CatalogEntry, item: Item, settings: Settings) -> None:
    """Fetch the ALF objects an item needs into the ONE cache (users online; tests use local mode)."""
    one = one_client(entry, settings)
    eid, collection = item.extra["eid"], item.extra["collection"]
    objects = [("spikes", collection), ("clusters", collection), ("channels", collection), ("trials", "alf")]
    if entry.ingest.behavior is None or any(b.startswith("wheel") for b in entry.ingest.behavior):
        objects.append(("wheel", "alf"))
    for obj, coll in objects:
        try:
            one.load_object(eid, obj, collection=coll, download_only=True)
        except Exception as err:  # ONE raises its own ALFObjectNotFound for absent objects
            if obj == "spikes":
                raise SourceError(f"{item.uri}: ONE could not download {obj} ({err})") from None


def _under(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}"
