"""DANDI Archive assets → ingest items, resolved with the ``dandi`` client (``pip install neurobridge[dandi]``).

DANDI stores asset bytes content-addressed in its public bucket (``s3://dandiarchive/blobs/…``); the API maps a
dandiset version's paths to those blobs. Items keep the asset path as their name and read the blob by S3 range
requests, so nothing is downloaded whole. Offline, point the entry at a local mirror (``resolve: mirror``).
"""

from __future__ import annotations

import re

from neurobridge.catalog import CatalogEntry
from neurobridge.sources.base import Item, SourceError, item_key

BUCKET = "dandiarchive"
_BLOB_URL = re.compile(r"^https?://(?:dandiarchive\.s3\.amazonaws\.com|s3\.amazonaws\.com/dandiarchive)/(?P<key>.+)$")


def blob_uri(url: str) -> str:
    """An asset's S3 content URL (https) as an ``s3://`` URI that fsspec reads by range."""
    m = _BLOB_URL.match(url)
    if not m:
        raise SourceError(f"{url}: not a DANDI S3 blob URL")
    return f"s3://{BUCKET}/{m['key']}"


def asset_item(path: str, size: int, sha256: str | None, content_urls: list[str], dandiset: str) -> Item:
    s3 = [u for u in content_urls if _BLOB_URL.match(u)]
    if not s3:
        raise SourceError(f"DANDI:{dandiset}/{path}: no S3 content URL among {content_urls}")
    rel = path.lstrip("/")
    return Item(key=item_key(rel), uri=blob_uri(s3[0]), rel=rel, fingerprint=f"{size}:{sha256 or ''}")


def discover_dandi(entry: CatalogEntry) -> list[Item]:
    try:
        from dandi.dandiapi import DandiAPIClient
    except ImportError:
        raise SourceError(
            f"catalog entry {entry.name!r} resolves DANDI:{entry.dandi.dandiset} through the DANDI API, which needs "
            "the dandi client: pip install 'neurobridge[dandi]' (or set dandi.resolve: mirror for a local copy)"
        ) from None
    cfg = entry.dandi
    items = []
    with DandiAPIClient.for_dandi_instance("dandi") as client:
        dandiset = client.get_dandiset(cfg.dandiset, cfg.version)
        for asset in dandiset.get_assets_by_glob(cfg.glob):
            meta = asset.get_raw_metadata()
            urls = meta.get("contentUrl") or []
            sha = (meta.get("digest") or {}).get("dandi:sha2-256")
            items.append(asset_item(asset.path, asset.size, sha, urls, cfg.dandiset))
    items.sort(key=lambda i: i.rel)
    return items[: entry.selection.limit] if entry.selection.limit else items
