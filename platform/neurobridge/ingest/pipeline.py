"""The ingest plan on Ray Data: discover items → (read, validate, bin, window, tokenize, write) per item → commit.

Items are the unit of parallelism and of failure. Each Ray task streams one item into its own Parquet part and
status record, so a worker that dies is retried by Ray without duplicating rows, and a bad file fails alone.
The driver only lists sources and, at the end, writes the manifest and then the card that makes the version
visible.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..catalog import CatalogEntry
from ..config import Settings, get_settings
from ..runtime import ensure_ray
from ..sources import Item, SourceError, discover
from ..storage import filesystem, join, read_json
from .manifest import (
    CARD,
    build_card,
    dataset_version,
    load_item_records,
    version_dir,
    write_card,
    write_manifest,
)
from .process import process_item


@dataclass
class IngestReport:
    dataset: str
    version: str
    path: str
    items: int
    processed: int
    skipped: int
    failed: list[dict] = field(default_factory=list)
    card: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _ingest_batch(batch: dict, entry_json: str, vdir: str, settings_json: str) -> dict:
    """Ray Data UDF: one item per batch → one status record."""
    entry = CatalogEntry.model_validate_json(entry_json)
    settings = Settings.model_validate_json(settings_json)
    out = []
    for raw in batch["item"]:
        rec = process_item(entry, Item.from_dict(json.loads(raw)), vdir, settings)
        out.append(json.dumps(rec, default=str))
    return {"record": np.array(out, dtype=object)}


def ingest(
    entry: CatalogEntry,
    settings: Settings | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    on_record=None,
) -> IngestReport:
    """Ingest one catalog entry into a new (or the matching existing) dataset version."""
    settings = entry.settings_for(settings or get_settings())
    t0 = time.perf_counter()
    items = discover(entry, settings)
    if not items:
        raise SourceError(f"catalog entry {entry.name!r}: no items found under {entry.resolved_uri(settings)}")
    version = dataset_version(entry, items)
    vdir = version_dir(settings, entry.name, version)
    fs, card_path = filesystem(join(vdir, CARD), settings)
    records = load_item_records(vdir, settings)
    keys = {i.key for i in items}
    done = {k: r for k, r in records.items() if r["status"] == "ok" and k in keys}
    todo = [i for i in items if i.key not in done]
    if not todo and fs.exists(card_path):
        card = read_json(fs, card_path)
        return IngestReport(entry.name, version, vdir, len(items), 0, len(items), [], card, time.perf_counter() - t0)

    new: list[dict] = []
    if todo:
        new = _run_items(entry, todo, vdir, settings, workers, progress, on_record)
    by_key = {**done, **{r["item"]: r for r in new}}
    ordered = [by_key[i.key] for i in items if i.key in by_key]
    write_manifest(vdir, ordered, settings)
    card = build_card(entry, version, ordered, _split_counts(ordered), _vocabularies(ordered))
    write_card(vdir, card, settings)  # last: from here on the version exists for readers
    failed = [r for r in ordered if r["status"] != "ok"]
    return IngestReport(
        entry.name, version, vdir, len(items), len(todo), len(done), failed, card, time.perf_counter() - t0
    )


def _run_items(entry, todo: list[Item], vdir: str, settings: Settings, workers, progress, on_record) -> list[dict]:
    import ray
    import ray.data

    ensure_ray(settings)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    n_cpu = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    size = max(1, min(workers or n_cpu, len(todo)))
    ds = ray.data.from_items(
        [{"item": json.dumps(i.to_dict())} for i in todo], override_num_blocks=len(todo)
    ).map_batches(
        _ingest_batch,
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=size),
        fn_kwargs={
            "entry_json": entry.model_dump_json(),
            "vdir": vdir,
            "settings_json": settings.model_dump_json(),
        },
        num_cpus=1,  # Ray Data retries tasks whose worker died; a retried item rewrites its part whole
    )
    records = []
    for row in ds.iter_rows():
        rec = json.loads(row["record"])
        records.append(rec)
        if on_record is not None:
            on_record(rec)
    return records


def _split_counts(records: list[dict]) -> dict:
    total: Counter = Counter()
    for r in records:
        total.update(r.get("splits") or {})
    return dict(sorted(total.items()))


def _vocabularies(records: list[dict]) -> dict:
    ok = [r for r in records if r["status"] == "ok" and r["rows"]]
    regions: Counter = Counter()
    for r in ok:
        regions.update(r.get("regions") or {})
    return {
        "sessions": sorted({s for r in ok for s in (r.get("sessions") or [r["session"]])}),
        "subjects": sorted({s for r in ok for s in (r.get("subjects") or [r["subject"]])}),
        "species": sorted({r.get("species") for r in ok if r.get("species")}),
        "tasks": sorted({r.get("task") for r in ok if r.get("task")}),
        "regions": dict(sorted(regions.items())),
    }
