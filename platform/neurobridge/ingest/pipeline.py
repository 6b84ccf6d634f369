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
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings, check_faults, ensure_ray, get_settings
from neurobridge.ingest.item import blank_record, process_item
from neurobridge.ingest.plan import IngestReport, Plan, commit, plan_entry
from neurobridge.sources import Item, SourceError
from neurobridge.storage import StoreError
from neurobridge.store.card import ItemRecord, write_record

MAX_RETRIES = 3  # Ray Data's own default retries a dying task forever: one poison item would hang the run


@dataclass
class IngestOptions:
    """How an ingest runs (not what it produces: nothing here changes a dataset version)."""

    workers: int | None = None  # parallel items (default: Ray's CPUs)
    progress: bool = True  # Ray Data's progress bars
    on_record: Callable[[str, ItemRecord], None] | None = None  # (entry name, record) of each item as it arrives
    max_retries: int = MAX_RETRIES  # attempts after the worker ingesting an item dies (0: none)
    resources: dict[str, float] | None = None  # custom Ray resources per item, e.g. {"ingest": 0.001}

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 (got {self.max_retries}): unbounded retries can hang a run")


def _ingest_batch(batch: dict, entries_json: dict, vdirs: dict, settings_json: dict) -> dict:
    """Ray Data UDF: one item per batch → one status record (the item names its catalog entry)."""
    out = []
    for raw in batch["item"]:
        d = json.loads(raw)
        name = d.pop("_entry")
        entry = CatalogEntry.from_json(entries_json[name])
        settings = Settings.model_validate_json(settings_json[name])
        item = Item.from_dict(d)
        try:
            rec = process_item(entry, item, vdirs[name], settings)
        except Exception as err:  # e.g. the store refused the status record: a result, not a lost item
            rec = blank_record(item)
            rec.error = f"{item.uri}: {type(err).__name__}: {err} (recording the item)"
        out.append(json.dumps({"entry": name, "record": rec.model_dump(mode="json")}))
    return {"record": np.array(out, dtype=object)}


def ingest(
    entry: CatalogEntry, settings: Settings | None = None, options: IngestOptions | None = None, **kw
) -> IngestReport:
    """Ingest one catalog entry into a new (or the matching existing) dataset version."""
    result = ingest_many([entry], settings, options, **kw)[0]
    if isinstance(result, Exception):
        raise result
    return result


def ingest_many(
    entries: list[CatalogEntry], settings: Settings | None = None, options: IngestOptions | None = None, **kw
) -> list[IngestReport | Exception]:
    """Ingest several catalog entries in one Ray Data run, so that items of all entries share the workers.

    Each entry still gets its own dataset version, manifest and card. An entry whose listing fails (missing
    root, no items) is returned as its error; the others go on. ``kw`` are ``IngestOptions`` fields.
    """
    opts = options or IngestOptions(**kw)
    base = settings or get_settings()
    check_faults(base)  # a bad fault spec fails here, not in every worker
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SourceError(f"catalog entries named more than once in one ingest: {', '.join(dup)}")
    plans: list[Plan | Exception] = []
    for entry in entries:
        try:
            plans.append(plan_entry(entry, entry.settings_for(base)))
        except (SourceError, StoreError) as err:
            plans.append(err)
    runnable = [p for p in plans if isinstance(p, Plan) and p.todo]
    new: dict[str, list[ItemRecord]] = {p.entry.name: [] for p in runnable}
    if runnable:
        for name, rec in _run_items(runnable, base, opts):
            new[name].append(rec)
    return [p if isinstance(p, Exception) else commit(p, new.get(p.entry.name, [])) for p in plans]


def _run_items(plans: list[Plan], settings: Settings, opts: IngestOptions) -> list[tuple[str, ItemRecord]]:
    import ray
    import ray.data

    ensure_ray(settings)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = opts.progress
    ctx.print_on_execution_start = False
    n_cpu = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    rows = [{"item": json.dumps({**i.to_dict(), "_entry": p.entry.name})} for p in plans for i in p.todo]
    size = max(1, min(opts.workers or n_cpu, len(rows)))
    with warnings.catch_warnings():  # max_retries has no named map_batches parameter in Ray 2.60
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = _plan_dataset(rows, plans, size, opts)
    # An item whose worker died on every attempt loses its block: drop it and go on (it is recorded below).
    # Exceptions cannot get here (_ingest_batch returns a record for every item), so only lost workers are.
    ds.context.max_errored_blocks = -1
    records: list[tuple[str, ItemRecord]] = []
    for row in ds.iter_rows():
        got = json.loads(row["record"])
        records.append((got["entry"], ItemRecord.model_validate(got["record"])))
        if opts.on_record is not None:
            opts.on_record(*records[-1])
    seen = {(name, r.item) for name, r in records}
    for p in plans:
        for item in p.todo:
            if (p.entry.name, item.key) not in seen:
                records.append((p.entry.name, _lost(item, p, opts.max_retries)))
                if opts.on_record is not None:
                    opts.on_record(*records[-1])
    return records


def _plan_dataset(rows: list[dict], plans: list[Plan], size: int, opts: IngestOptions):
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
        resources=opts.resources or None,
        max_retries=opts.max_retries,  # a task whose worker died runs again and rewrites its part whole
    )


def _lost(item: Item, plan: Plan, max_retries: int) -> ItemRecord:
    """The record of an item that never returned: its worker process died on every attempt."""
    rec = blank_record(item)
    rec.attempt = max_retries + 1
    rec.error = (
        f"{item.uri}: no result after {max_retries + 1} attempt(s): the Ray worker process ingesting it died each "
        "time (killed, out of memory, node lost, or a crash in native code); retries exhausted. The Ray worker "
        "logs of this job say which; a rerun retries only the failed items"
    )
    write_record(rec, plan.vdir, plan.settings)
    return rec
