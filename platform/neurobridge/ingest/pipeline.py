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
from ..storage import StoreError, filesystem, join, read_json
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


def _ingest_batch(batch: dict, entries_json: dict, vdirs: dict, settings_json: dict) -> dict:
    """Ray Data UDF: one item per batch → one status record (the item names its catalog entry)."""
    out = []
    for raw in batch["item"]:
        d = json.loads(raw)
        name = d.pop("_entry")
        entry = CatalogEntry.model_validate_json(entries_json[name])
        settings = Settings.model_validate_json(settings_json[name])
        rec = process_item(entry, Item.from_dict(d), vdirs[name], settings)
        rec["_entry"] = name
        out.append(json.dumps(rec, default=str))
    return {"record": np.array(out, dtype=object)}


@dataclass
class _Plan:
    entry: CatalogEntry
    settings: Settings
    items: list[Item]
    version: str
    vdir: str
    done: dict
    todo: list[Item]
    t0: float


def ingest(
    entry: CatalogEntry,
    settings: Settings | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    on_record=None,
) -> IngestReport:
    """Ingest one catalog entry into a new (or the matching existing) dataset version."""
    result = ingest_many([entry], settings, workers=workers, progress=progress, on_record=on_record)[0]
    if isinstance(result, Exception):
        raise result
    return result


def ingest_many(
    entries: list[CatalogEntry],
    settings: Settings | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    on_record=None,
) -> list[IngestReport | Exception]:
    """Ingest several catalog entries in one Ray Data run, so that items of all entries share the workers.

    Each entry still gets its own dataset version, manifest and card. An entry whose listing fails (missing
    root, no items) is returned as its error; the others go on.
    """
    base = settings or get_settings()
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SourceError(f"catalog entries named more than once in one ingest: {', '.join(dup)}")
    plans: list[_Plan | Exception] = []
    for entry in entries:
        try:
            plans.append(_plan(entry, entry.settings_for(base)))
        except (SourceError, StoreError) as err:
            plans.append(err)
    runnable = [p for p in plans if isinstance(p, _Plan) and p.todo]
    new: dict[str, list[dict]] = {p.entry.name: [] for p in runnable}
    if runnable:
        for rec in _run_items(runnable, base, workers, progress, on_record):
            new[rec.pop("_entry")].append(rec)
    return [p if isinstance(p, Exception) else _commit(p, new.get(p.entry.name, [])) for p in plans]


def _plan(entry: CatalogEntry, settings: Settings) -> _Plan:
    t0 = time.perf_counter()
    items = discover(entry, settings)
    if not items:
        raise SourceError(f"catalog entry {entry.name!r}: no items found under {entry.resolved_uri(settings)}")
    version = dataset_version(entry, items)
    vdir = version_dir(settings, entry.name, version)
    records = load_item_records(vdir, settings)
    keys = {i.key for i in items}
    done = {k: r for k, r in records.items() if r["status"] == "ok" and k in keys}
    todo = [i for i in items if i.key not in done]
    return _Plan(entry, settings, items, version, vdir, done, todo, t0)


def _commit(plan: _Plan, new: list[dict]) -> IngestReport:
    entry, settings, items = plan.entry, plan.settings, plan.items
    fs, card_path = filesystem(join(plan.vdir, CARD), settings)
    if not plan.todo and fs.exists(card_path):
        card = read_json(fs, card_path)
        return IngestReport(entry.name, plan.version, plan.vdir, len(items), 0, len(items), [], card,
                            time.perf_counter() - plan.t0)  # fmt: skip
    by_key = {**plan.done, **{r["item"]: r for r in new}}
    ordered = [by_key[i.key] for i in items if i.key in by_key]
    write_manifest(plan.vdir, ordered, settings)
    card = build_card(entry, plan.version, ordered, _split_counts(ordered), _vocabularies(ordered))
    write_card(plan.vdir, card, settings)  # last: from here on the version exists for readers
    failed = [r for r in ordered if r["status"] != "ok"]
    return IngestReport(entry.name, plan.version, plan.vdir, len(items), len(plan.todo), len(plan.done), failed,
                        card, time.perf_counter() - plan.t0)  # fmt: skip


def _run_items(plans: list[_Plan], settings: Settings, workers, progress, on_record) -> list[dict]:
    import ray
    import ray.data

    ensure_ray(settings)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    n_cpu = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    rows = [{"item": json.dumps({**i.to_dict(), "_entry": p.entry.name})} for p in plans for i in p.todo]
    size = max(1, min(workers or n_cpu, len(rows)))
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _ingest_batch,
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=size),
        fn_kwargs={
            "entries_json": {p.entry.name: p.entry.model_dump_json() for p in plans},
            "vdirs": {p.entry.name: p.vdir for p in plans},
            "settings_json": {p.entry.name: p.settings.model_dump_json() for p in plans},
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
