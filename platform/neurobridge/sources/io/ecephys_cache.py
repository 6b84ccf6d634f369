"""Sessions of an allensdk EcephysProjectCache tree (Allen Visual Coding Neuropixels), listed without allensdk.

The cache keeps ``sessions.csv`` (one row per session: id, session_type, specimen, ...) at its root and one NWB
per session at ``session_<id>/session_<id>.nwb``, with the probes' LFP files beside it (never selected). When
the sessions table is there it is the listing: each item carries its row's metadata into the item record, and
``session_types`` keeps only the sessions that can be windowed (the others are skipped and logged, because
they can never succeed; with no ``session_types`` every session is listed and one without the configured
intervals table fails alone, naming the table). A session in the table whose file is absent becomes a failed
item, never a silent gap. Without a sessions table, discovery falls back to globbing ``selection.include``.

With ``manifest`` set, allensdk itself lists the sessions, in its own environment (see ``allensdk_env``).
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
from collections import Counter
from fnmatch import fnmatch

from neurobridge.catalog import CatalogEntry, EcephysCache
from neurobridge.config import Settings
from neurobridge.sources.base import Item, SourceError, fingerprint, item_key
from neurobridge.storage import filesystem

log = logging.getLogger(__name__)


def discover(entry: CatalogEntry, cache: EcephysCache, settings: Settings) -> list[Item] | None:
    """Items from the cache's session listing, or None when the tree has no sessions table (glob instead)."""
    root = entry.resolved_uri(settings)
    if cache.manifest:
        from neurobridge.sources.io.allensdk_env import list_sessions

        if "://" in root:
            raise SourceError(f"{root}: nwb.cache.manifest needs a local cache directory as the entry uri")
        listing = list_sessions(cache, root)
        return _items(entry, cache, settings, listing["sessions"], "allensdk manifest")
    fs, path = filesystem(root, settings)
    table = posixpath.join(path.rstrip("/"), cache.sessions_table)
    if not fs.exists(table):
        log.warning("%s: no %s at %s; listing NWB files by glob instead", entry.name, cache.sessions_table, root)
        return None
    rows = read_sessions_table(fs, table, f"{root.rstrip('/')}/{cache.sessions_table}")
    sessions = [
        {**row, "path": posixpath.join(path.rstrip("/"), cache.session_path.format(id=row["id"]))} for row in rows
    ]
    return _items(entry, cache, settings, sessions, cache.sessions_table)


def read_sessions_table(fs, path: str, name: str) -> list[dict[str, str]]:
    try:
        with fs.open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"{name}: cannot read the sessions table: {err}") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "id" not in reader.fieldnames:
        raise SourceError(f"{name}: the sessions table has no 'id' column (columns: {reader.fieldnames})")
    rows = [row for row in reader if (row.get("id") or "").strip()]
    ids = Counter(row["id"] for row in rows)
    dupes = [i for i, n in ids.items() if n > 1]
    if dupes:
        raise SourceError(f"{name}: session id {dupes[0]} is listed {ids[dupes[0]]} times")
    return rows


def _items(entry: CatalogEntry, cache: EcephysCache, settings: Settings, sessions: list[dict], listed_in: str):
    """Items for session records ``{id, path, <metadata>}``; fingerprints come from one listing, not reads."""
    root = entry.resolved_uri(settings)
    fs, base = filesystem(root, settings)
    base = base.rstrip("/")
    pattern = posixpath.join(base, cache.session_path.replace("{id}", "*"))
    listing = fs.glob(pattern, detail=True)
    scheme = root.split("://", 1)[0] if "://" in root else None
    items, skipped = [], Counter()
    for s in sessions:
        kind = s.get("session_type")
        if cache.session_types and kind not in cache.session_types:
            skipped[kind] += 1
            continue
        path = s["path"]
        rel = posixpath.relpath(path, base)
        meta = {"session_id": str(s["id"]), "listed_in": listed_in}
        meta.update({c: str(s[c]) for c in cache.metadata if s.get(c) not in (None, "")})
        info = listing.get(path)
        if info is None:
            meta["missing"] = True
        uri = f"{scheme}://{path}" if scheme else path
        fp = fingerprint(info) if info is not None else "missing"
        items.append(Item(key=item_key(rel), uri=uri, rel=rel, fingerprint=fp, extra={"meta": meta}))
    if skipped:
        detail = ", ".join(f"{k}: {n}" for k, n in sorted(skipped.items(), key=lambda kv: str(kv[0])))
        log.warning(
            "%s: skipped %d sessions not in nwb.cache.session_types (%s)", entry.name, sum(skipped.values()), detail
        )
    items.sort(key=lambda i: i.rel)
    items = [i for i in items if not any(fnmatch(i.rel, pat) for pat in entry.selection.exclude)]
    return items[: entry.selection.limit] if entry.selection.limit else items
