"""Ingest of one item: open its source, turn it into rows by the path its kind needs, and record the outcome.

Never raises for bad input: the item's record says why it failed, so one bad file never kills a run.
"""

from __future__ import annotations

import time
import traceback

from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings, fault_point, task_attempt
from neurobridge.ingest.blocks import ingest_binned
from neurobridge.ingest.spikes import ingest_source
from neurobridge.sources import Item, SourceError, open_source
from neurobridge.sources.base import BinnedSource
from neurobridge.store.card import ItemRecord, write_record


def blank_record(item: Item) -> ItemRecord:
    """An item's status record before any work: failed, no rows (what stays if nothing else is learnt)."""
    return ItemRecord(item=item.key, uri=item.uri, rel=item.rel, checksum=item.fingerprint, meta=item.extra.get("meta"))


def process_item(entry: CatalogEntry, item: Item, vdir: str, settings: Settings) -> ItemRecord:
    """Ingest one item and record its status; never raises for bad input (the record says why)."""
    t0, c0 = time.perf_counter(), time.process_time()
    results: dict = {"attempt": task_attempt() + 1}  # > 1: Ray retried the item after its worker process died
    fault_point(settings, "ingest.start", rel=item.rel, key=item.key)
    try:
        with open_source(entry, item, settings) as src:
            ingest = ingest_binned if isinstance(src, BinnedSource) else ingest_source
            results |= ingest(src, entry, item, vdir, settings)
        results["status"] = "ok"
    except SourceError as err:
        results["error"] = str(err)
    except Exception as err:  # one bad item never kills the run; keep the reason and where it came from
        where = traceback.extract_tb(err.__traceback__)[-1]
        results["error"] = f"{item.uri}: {type(err).__name__}: {err} (at {where.filename}:{where.lineno})"
    results["seconds"] = round(time.perf_counter() - t0, 4)
    results["cpu_seconds"] = round(time.process_time() - c0, 4)  # this process's CPU: the cost, whatever the load
    rec = ItemRecord.model_validate({**blank_record(item).model_dump(), **results})
    write_record(rec, vdir, settings)
    return rec
