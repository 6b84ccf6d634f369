"""Dataset versions: content hashes, per-item status records, the manifest and the dataset card.

Layout of ``<store>/tokens/<dataset>/<version>/``: ``part-<item>.parquet`` (rows), ``_items/<item>.json`` (one
status record per item, written by the worker after its part is committed: this is what lets reruns skip
finished items even if the driver died), ``_manifest.parquet`` (all records) and ``_dataset.json`` (the card,
written last; a version without it does not exist for readers).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from neurobridge import __version__
from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings
from neurobridge.ingest.schema import ALGORITHM_VERSION, MANIFEST_SCHEMA, SAMPLE_SCHEMA, SCHEMA_VERSION
from neurobridge.sources import Item
from neurobridge.storage import (
    StoreError,
    filesystem,
    join,
    read_json,
    safe_name,
    write_bytes_atomic,
    write_json_atomic,
)

CARD = "_dataset.json"
MANIFEST = "_manifest.parquet"


def dataset_version(entry: CatalogEntry, items: list[Item]) -> str:
    """Content hash of what determines the rows: sources, their fingerprints and the ingest config."""
    spec = {
        "schema": SCHEMA_VERSION,
        "algorithm": ALGORITHM_VERSION,
        "entry": entry.model_dump(
            include={"name", "kind", "species", "subject", "task", "region_map", "ingest", "one", "selection"}
        ),
        "items": sorted((i.rel, i.fingerprint) for i in items),
    }
    if getattr(entry, "pile", None) is not None:  # only when set, so other entries keep their versions
        spec["pile"] = entry.pile.model_dump()
    if entry.tvsd is not None:  # TVSD settings change rows (regions, trial filter); the clone source does not
        spec["tvsd"] = entry.tvsd.model_dump(exclude={"datalad"})
    if entry.nwb is not None:  # only when set, so versions of entries without NWB options keep their hash
        spec["nwb"] = entry.nwb.model_dump(exclude={"cache": {"allensdk_python"}})
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return "v-" + hashlib.sha256(blob).hexdigest()[:12]


def version_dir(settings: Settings, dataset: str, version: str) -> str:
    return join(settings.store, "tokens", safe_name(dataset), safe_name(version))


def load_item_records(vdir: str, settings: Settings) -> dict[str, dict]:
    fs, path = filesystem(join(vdir, "_items"), settings)
    if not fs.exists(path):
        return {}
    records = {}
    for f in fs.glob(f"{path}/*.json"):
        try:
            rec = read_json(fs, f)
        except (OSError, json.JSONDecodeError):
            continue  # a torn record counts as not done
        records[rec["item"]] = rec
    return records


def write_manifest(vdir: str, records: list[dict], settings: Settings) -> None:
    rows = [{name: rec.get(name) for name in MANIFEST_SCHEMA.names} for rec in records]
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fs, path = filesystem(join(vdir, MANIFEST), settings)
    write_bytes_atomic(fs, path, sink.getvalue().to_pybytes())


def build_card(entry: CatalogEntry, version: str, records: list[dict], splits: dict, vocab: dict) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    return {
        "dataset": entry.name,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "schema_version": SCHEMA_VERSION,
        "algorithm_version": ALGORITHM_VERSION,
        "code_version": __version__,
        "git_commit": _git_commit(),
        "kind": entry.kind,
        "entry": entry.model_dump(mode="json"),
        "schema": SAMPLE_SCHEMA.to_string(show_schema_metadata=False),
        "files": sorted(r["part"] for r in ok if r.get("part")),
        "counts": {
            "items": len(records),
            "items_ok": len(ok),
            "items_failed": len(failed),
            "rows": sum(r["rows"] for r in ok),
            "tokens": sum(r["tokens"] for r in ok),
            "spikes": sum(r["spikes"] for r in ok),
            "clipped": sum(r["clipped"] for r in ok),
            "sessions": len({s for r in ok if r["rows"] for s in (r.get("sessions") or [r["session"]])}),
            "units": sum(r["units"] for r in ok),
            "excluded_windows": sum(r.get("excluded_windows") or 0 for r in ok),  # by window.exclude (blanks)
        },
        "side_outputs": _side_outputs(ok),
        "splits": splits,
        "split_rule": entry.ingest.split.model_dump(),
        "vocabularies": vocab,
        "failed": [{"item": r["item"], "uri": r["uri"], "error": r["error"]} for r in failed],
    }


def _side_outputs(ok: list[dict]) -> dict:
    """Tables written beside the rows (``units``, TVSD ``responses`` …): name → files and row count."""
    out: dict[str, dict] = {}
    for r in ok:
        for name, rows in (r.get("side_outputs") or {}).items():
            entry = out.setdefault(name, {"files": [], "rows": 0})
            entry["files"].append(f"{name}/part-{r['item']}.parquet")
            entry["rows"] += rows
    return {k: {"files": sorted(v["files"]), "rows": v["rows"]} for k, v in sorted(out.items())}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_card(vdir: str, card: dict, settings: Settings) -> None:
    fs, path = filesystem(join(vdir, CARD), settings)
    write_json_atomic(fs, path, card)


@dataclass
class DatasetRef:
    dataset: str
    version: str
    path: str
    card: dict


def list_versions(settings: Settings, dataset: str) -> list[DatasetRef]:
    """Complete versions of a dataset (those with a card), oldest first."""
    base = join(settings.store, "tokens", safe_name(dataset))
    fs, path = filesystem(base, settings)
    if not fs.exists(path):
        return []
    refs = []
    for d in fs.ls(path, detail=False):
        name = d.rstrip("/").rsplit("/", 1)[-1]
        card_path = f"{d.rstrip('/')}/{CARD}"
        if name.startswith("v-") and fs.exists(card_path):
            refs.append(DatasetRef(dataset, name, join(base, name), read_json(fs, card_path)))
    return sorted(refs, key=lambda r: (r.card.get("created", ""), r.version))


def resolve_dataset(settings: Settings, ref: str) -> DatasetRef:
    """``name`` (newest complete version) or ``name@version``."""
    name, _, version = ref.partition("@")
    try:
        safe_name(name)
        if version:
            safe_name(version)
    except StoreError as err:
        raise StoreError(f"dataset reference {ref!r}: {err}") from None
    versions = list_versions(settings, name)
    if not versions:
        raise StoreError(f"no complete version of dataset {name!r} in {settings.store} (run `neurobridge ingest`)")
    if not version:
        return versions[-1]
    for r in versions:
        if r.version == version:
            return r
    raise StoreError(f"dataset {name!r} has no complete version {version!r}; have: {[r.version for r in versions]}")
