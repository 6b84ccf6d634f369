"""List the sessions of an allensdk EcephysProjectCache manifest as JSON, inside the allensdk environment.

Runs with that environment's interpreter (``python -I allensdk_listing.py manifest.json``) and imports only
allensdk and the standard library: allensdk pins numpy<1.24 and pandas 1.5, so it can never share the core
environment. The core reads the JSON on stdout: ``{"allensdk": version, "manifest": path, "sessions": [{"id",
"path", "exists", "session_type", "specimen_id", ..., "unit_count"}]}``. ``unit_count`` is allensdk's own count
after its default unit filters, which the core's ``ingest.unit_filter`` mirrors. Nothing is downloaded:
the cache is built on allensdk's fixed (fetch-refusing) api, so only what is already in the cache is listed.
"""

from __future__ import annotations

import json
import math
import os
import sys

COLUMNS = ("session_type", "specimen_id", "age_in_days", "sex", "full_genotype", "unit_count", "probe_count")


def _plain(value):
    """numpy/pandas scalars → JSON values (NaN → null)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _refuse(*args, **kwargs):
    raise RuntimeError("the neurobridge allensdk listing never downloads; fetch with allensdk first")


def list_manifest(manifest: str) -> dict:
    import allensdk
    from allensdk.brain_observatory.ecephys.ecephys_project_api import EcephysProjectFixedApi
    from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache

    # EcephysProjectCache.fixed() fails in allensdk 2.16.2 (the fixed api has no rma_engine to write with):
    # build the same offline cache with a writer that refuses, since nothing may be fetched here.
    cache = EcephysProjectCache(fetch_api=EcephysProjectFixedApi(), stream_writer=_refuse, manifest=manifest)
    table = cache.get_session_table()
    sessions = []
    for session_id, row in table.iterrows():
        path = os.path.abspath(cache.get_cache_path(None, cache.SESSION_NWB_KEY, session_id, session_id))
        record = {"id": int(session_id), "path": path, "exists": os.path.isfile(path)}
        record.update({c: _plain(row[c]) for c in COLUMNS if c in row.index})
        sessions.append(record)
    return {"allensdk": allensdk.__version__, "manifest": os.path.abspath(manifest), "sessions": sessions}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -I allensdk_listing.py MANIFEST_JSON", file=sys.stderr)
        return 2
    if not os.path.isfile(argv[0]):
        print(f"{argv[0]}: no such manifest file", file=sys.stderr)
        return 2
    json.dump(list_manifest(argv[0]), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
