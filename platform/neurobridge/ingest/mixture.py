"""Mixtures: a named set of dataset versions ingested together, which is what pretraining consumes.

``<store>/mixtures/<name>.json`` pins each dataset to the version the ingest produced, so a training run names
one mixture and gets exactly the data it was trained on, even after the catalog or the raw data change.
"""

from __future__ import annotations

import time

from neurobridge.config import Settings
from neurobridge.storage import StoreError, filesystem, join, read_json, safe_name, write_json_atomic


def write_mixture(settings: Settings, name: str, reports: list) -> dict:
    datasets = []
    for r in reports:
        c = r.card.get("counts", {})
        datasets.append(
            {
                "dataset": r.dataset,
                "version": r.version,
                "kind": r.card.get("kind"),
                "rows": c.get("rows", 0),
                "tokens": c.get("tokens", 0),
                "sessions": c.get("sessions", 0),
                "species": r.card.get("vocabularies", {}).get("species", []),
            }
        )
    mixture = {"name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "datasets": datasets}
    fs, path = filesystem(join(settings.store, "mixtures", f"{safe_name(name)}.json"), settings)
    write_json_atomic(fs, path, mixture)
    return mixture


def read_mixture(settings: Settings, name: str) -> dict:
    fs, path = filesystem(join(settings.store, "mixtures", f"{safe_name(name)}.json"), settings)
    if not fs.exists(path):
        folder = filesystem(join(settings.store, "mixtures"), settings)
        known = sorted(p.rsplit("/", 1)[-1][:-5] for p in folder[0].glob(f"{folder[1]}/*.json"))
        raise StoreError(f"no mixture named {name!r} in {settings.store} (known: {', '.join(known) or 'none'})")
    return read_json(fs, path)
