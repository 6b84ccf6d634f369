"""sources/io/dandi: DANDI assets resolve to blobs in the public bucket, read unsigned while the store keeps its
own endpoint."""

from __future__ import annotations

import pytest
from neurobridge.catalog import CatalogEntry
from neurobridge.sources import SourceError
from neurobridge.sources.io.dandi import asset_item, blob_uri


def test_dandi_assets_resolve_to_the_public_bucket_and_read_anonymously(settings):
    url = "https://dandiarchive.s3.amazonaws.com/blobs/0a1/b2c/0a1b2c3d-0000-4000-8000-000000000000"
    item = asset_item(
        "sub-Jenkins/sub-Jenkins_ses-full_desc-train_behavior+ecephys.nwb",
        123,
        "ab" * 32,
        ["https://api.dandiarchive.org/api/assets/x/download/", url],
        "000128",
    )
    assert item.uri == "s3://dandiarchive/blobs/0a1/b2c/0a1b2c3d-0000-4000-8000-000000000000"
    assert item.rel.startswith("sub-Jenkins/") and item.fingerprint == f"123:{'ab' * 32}"
    with pytest.raises(SourceError, match="not a DANDI S3 blob URL"):
        blob_uri("https://example.org/blobs/x")
    with pytest.raises(SourceError, match="no S3 content URL"):
        asset_item("a.nwb", 1, None, ["https://api.dandiarchive.org/api/assets/x/download/"], "000128")
    entry = CatalogEntry.of(
        name="dandi_test", kind="nwb", uri="dandi/000128", dandi={"dandiset": "000128", "version": "0.220113.0400"}
    )
    tuned = entry.settings_for(settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:9"}))
    blob = tuned.storage_options(item.uri)
    assert blob["anon"] is True and "client_kwargs" not in blob  # AWS itself, unsigned
    store = tuned.storage_options("s3://my-store/tokens")
    assert "anon" not in store and store["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
