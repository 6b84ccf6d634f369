"""IBL sessions through ONE (``one-api``): items from ONE's session and dataset tables, and the ALF objects an item
needs fetched into ONE's cache before it is read.

``mode: local`` reads a cache directory (a cache on object storage is used through a local copy of its small
cache tables); otherwise ONE talks to its server (``base_url``) and downloads into the cache. The ALF files
themselves are then read like any other ALF folder (``sources/alf.py``).

Logins: IBL's public database is read with the public login IBL documents for it (ONE 3 no longer fills it in,
and without one ONE stops with "No Alyx username"); ``NB_ONE_USERNAME`` / ``NB_ONE_PASSWORD`` (or the entry's
``one.username``) log in elsewhere. The password is never logged: connection errors name the server and the user.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath

from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings
from neurobridge.sources.base import Item, SourceError, item_key
from neurobridge.storage import filesystem

# IBL's documented login for its public database (https://int-brain-lab.github.io/iblenv/notebooks_external/
# data_download.html: ONE.setup(base_url=<openalyx>, silent=True); ONE(password='international') connects as
# "intbrainlab"). Public by design: it reads only the public data release.
PUBLIC_LOGINS = {"openalyx.internationalbrainlab.org": ("intbrainlab", "international")}


def credentials(base_url: str | None, username: str | None = None) -> tuple[str | None, str | None]:
    """(username, password) for ``base_url``: NB_ONE_USERNAME / NB_ONE_PASSWORD, else the entry's username, else the
    public login of a public database; (None, None) leaves ONE to its own stored login."""
    host = (base_url or "").split("://", 1)[-1].split("/", 1)[0]
    public = PUBLIC_LOGINS.get(host, (None, None))
    user = os.environ.get("NB_ONE_USERNAME") or username or public[0]
    password = os.environ.get("NB_ONE_PASSWORD") or (public[1] if user == public[0] else None)
    return user, password


def one_client(entry: CatalogEntry, settings: Settings):
    """A ONE instance; a cache on object storage is used through a local copy of its (small) cache tables. A server
    that cannot be reached or refuses the login is a ``SourceError`` naming the server and the user."""
    from one.api import ONE

    cfg = entry.one
    cache_dir = entry.resolved_uri(settings)
    if "://" in cache_dir:
        if cfg.mode != "local":
            raise SourceError(f"{cache_dir}: a remote ONE cache needs one.mode 'local' (ONE downloads to local disks)")
        cache_dir = _local_tables(cache_dir, settings)
    if cfg.mode == "local":
        return ONE(mode="local", cache_dir=cache_dir)
    user, password = credentials(cfg.base_url, cfg.username)
    try:
        return ONE(base_url=cfg.base_url, cache_dir=cache_dir, username=user, password=password, silent=True)
    except Exception as err:  # refused connection, bad login, server error: this entry fails, with the reason
        reason = f"{type(err).__name__}: {err}"
        if password:
            reason = reason.replace(password, "***")
        raise SourceError(f"ONE cannot connect to {cfg.base_url} as {user or '(no user)'}: {reason}") from None


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
