"""The ingest plan on Ray Data: discover items → (read, validate, bin, window, tokenize, write) per item → commit.

Items are the unit of parallelism and of failure. Each Ray task streams one item into its own Parquet part and
status record, so a worker that dies is retried by Ray without duplicating rows, and a bad file fails alone.
Retries are bounded (``max_retries``): an item whose worker dies on every attempt (a poison file that crashes
native code, a session too big for the node's memory) is recorded as failed with that reason and the rest of the
run completes. The driver only lists sources and, at the end, writes the manifest and then the card that makes
the version visible.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from neurobridge import chaos
from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings, get_settings
from neurobridge.ingest.manifest import (
    CARD,
    build_card,
    dataset_version,
    load_item_records,
    version_dir,
    write_card,
    write_manifest,
)
from neurobridge.ingest.process import blank_record, process_item, write_record
from neurobridge.runtime import ensure_ray
from neurobridge.sources import Item, SourceError, discover
from neurobridge.storage import StoreError, filesystem, is_local_fs, join, read_json

MAX_RETRIES = 3  # Ray Data's own default retries a dying task forever: one poison item would hang the run


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
    retried: list[str] = field(default_factory=list)  # items that succeeded only after their worker died

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
        item = Item.from_dict(d)
        try:
            rec = process_item(entry, item, vdirs[name], settings)
        except Exception as err:  # e.g. the store refused the status record: a result, not a lost item
            rec = {**blank_record(item), "error": f"{item.uri}: {type(err).__name__}: {err} (recording the item)"}
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
    max_retries: int = MAX_RETRIES,
    resources: dict[str, float] | None = None,
) -> IngestReport:
    """Ingest one catalog entry into a new (or the matching existing) dataset version."""
    result = ingest_many(
        [entry],
        settings,
        workers=workers,
        progress=progress,
        on_record=on_record,
        max_retries=max_retries,
        resources=resources,
    )[0]
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
    max_retries: int = MAX_RETRIES,
    resources: dict[str, float] | None = None,
) -> list[IngestReport | Exception]:
    """Ingest several catalog entries in one Ray Data run, so that items of all entries share the workers.

    Each entry still gets its own dataset version, manifest and card. An entry whose listing fails (missing
    root, no items) is returned as its error; the others go on. ``max_retries``: attempts after a worker
    process dies while ingesting an item (0: none). ``resources``: custom Ray resources each item task asks for,
    e.g. ``{"ingest": 0.001}`` to keep ingest on the cluster's ingest node type (cluster.yaml).
    """
    base = settings or get_settings()
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0 (got {max_retries}): unbounded retries can hang a run")
    chaos.parse(base.chaos)  # a bad NB_CHAOS fails here, not in every worker
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
        for rec in _run_items(runnable, base, workers, progress, on_record, max_retries, resources):
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
        return IngestReport(
            entry.name, plan.version, plan.vdir, len(items), 0, len(items), [], card, time.perf_counter() - plan.t0
        )
    if new:
        _sweep_partial_writes(plan)
    by_key = {**plan.done, **{r["item"]: r for r in new}}
    ordered = [by_key[i.key] for i in items if i.key in by_key]
    write_manifest(plan.vdir, ordered, settings)
    card = build_card(entry, plan.version, ordered, _split_counts(ordered), _vocabularies(ordered))
    write_card(plan.vdir, card, settings)  # last: from here on the version exists for readers
    failed = [r for r in ordered if r["status"] != "ok"]
    retried = [r["rel"] for r in new if r["status"] == "ok" and (r.get("attempt") or 1) > 1]
    return IngestReport(
        entry.name,
        plan.version,
        plan.vdir,
        len(items),
        len(plan.todo),
        len(plan.done),
        failed,
        card,
        time.perf_counter() - plan.t0,
        retried,
    )


def _run_items(
    plans: list[_Plan],
    settings: Settings,
    workers,
    progress,
    on_record,
    max_retries: int,
    resources: dict[str, float] | None,
) -> list[dict]:
    import ray
    import ray.data

    ensure_ray(settings)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    n_cpu = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    rows = [{"item": json.dumps({**i.to_dict(), "_entry": p.entry.name})} for p in plans for i in p.todo]
    size = max(1, min(workers or n_cpu, len(rows)))
    with warnings.catch_warnings():  # max_retries has no named map_batches parameter in Ray 2.60
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = _plan_dataset(rows, plans, size, max_retries, resources)
    # An item whose worker died on every attempt loses its block: drop it and go on (it is recorded below).
    # Exceptions cannot get here (_ingest_batch returns a record for every item), so only lost workers are.
    ds.context.max_errored_blocks = -1
    records = []
    for row in ds.iter_rows():
        rec = json.loads(row["record"])
        records.append(rec)
        if on_record is not None:
            on_record(rec)
    seen = {(r["_entry"], r["item"]) for r in records}
    for p in plans:
        for item in p.todo:
            if (p.entry.name, item.key) not in seen:
                rec = _lost(item, p, max_retries)
                records.append(rec)
                if on_record is not None:
                    on_record(rec)
    return records


def _plan_dataset(rows: list[dict], plans: list[_Plan], size: int, max_retries: int, resources: dict | None):
    import ray.data

    return ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _ingest_batch,
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=size),
        fn_kwargs={
            "entries_json": {p.entry.name: p.entry.model_dump_json() for p in plans},
            "vdirs": {p.entry.name: p.vdir for p in plans},
            "settings_json": {p.entry.name: p.settings.model_dump_json() for p in plans},
        },
        num_cpus=1,
        resources=resources or None,
        max_retries=max_retries,  # a task whose worker died runs again and rewrites its part whole
    )


def _lost(item: Item, plan: _Plan, max_retries: int) -> dict:
    """The record of an item that never returned: its worker process died on every attempt."""
    rec = blank_record(item)
    rec["attempt"] = max_retries + 1
    rec["error"] = (
        f"{item.uri}: no result after {max_retries + 1} attempt(s): the Ray worker process ingesting it died each "
        "time (killed, out of memory, node lost, or a crash in native code); retries exhausted. The Ray worker "
        "logs of this job say which; a rerun retries only the failed items"
    )
    write_record(rec, plan.vdir, plan.settings)
    return {**rec, "_entry": plan.entry.name}


def _sweep_partial_writes(plan: _Plan) -> None:
    """Delete the temp files of writes a dead worker never finished (local stores; on object stores an unfinished
    upload never becomes an object). Runs after every task of the run has ended, so none is still being written."""
    fs, path = filesystem(plan.vdir, plan.settings)
    if is_local_fs(fs):
        for f in fs.find(path):
            if ".tmp-" in f.rsplit("/", 1)[-1]:
                fs.rm(f)


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
