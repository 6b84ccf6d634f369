"""Which items of an entry need work, and how a finished run becomes a visible dataset version.

The driver lists items (no recording is opened), hashes the version, and skips items whose records say ``ok``;
after the run it writes the manifest and then the card, which is what makes the version exist for readers.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from neurobridge import __version__
from neurobridge.catalog import CatalogEntry
from neurobridge.config import Settings, code_commit
from neurobridge.sources import Item, SourceError, discover
from neurobridge.storage import filesystem, is_local_fs, join
from neurobridge.store.card import (
    CARD,
    DatasetCard,
    ItemRecord,
    RowSchema,
    Vocabulary,
    build_card,
    load_item_records,
    read_card,
    write_card,
    write_manifest,
)
from neurobridge.store.schema import ALGORITHM_VERSION, SCHEMA_VERSION
from neurobridge.store.versions import dataset_version, version_dir


@dataclass
class IngestReport:
    dataset: str
    version: str
    path: str
    items: int
    processed: int
    skipped: int
    failed: list[ItemRecord] = field(default_factory=list)
    card: DatasetCard | None = None
    seconds: float = 0.0
    retried: list[str] = field(default_factory=list)  # items that succeeded only after their worker died

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class Plan:
    entry: CatalogEntry
    settings: Settings
    items: list[Item]
    version: str
    vdir: str
    done: dict[str, ItemRecord]
    todo: list[Item]
    t0: float


def plan_entry(entry: CatalogEntry, settings: Settings) -> Plan:
    t0 = time.perf_counter()
    items = discover(entry, settings)
    if not items:
        raise SourceError(f"catalog entry {entry.name!r}: no items found under {entry.resolved_uri(settings)}")
    version = dataset_version(entry, items)
    vdir = version_dir(settings, entry.name, version)
    records = load_item_records(vdir, settings)
    keys = {i.key for i in items}
    done = {k: r for k, r in records.items() if r.ok and k in keys}
    todo = [i for i in items if i.key not in done]
    return Plan(entry, settings, items, version, vdir, done, todo, t0)


def commit(plan: Plan, new: list[ItemRecord]) -> IngestReport:
    """Manifest, then card (the card last: from then on the version exists); a rerun with nothing to do reads it."""
    entry, settings, items = plan.entry, plan.settings, plan.items
    fs, card_path = filesystem(join(plan.vdir, CARD), settings)
    seconds = time.perf_counter() - plan.t0
    if not plan.todo and fs.exists(card_path):
        card = read_card(fs, card_path)
        return IngestReport(entry.name, plan.version, plan.vdir, len(items), 0, len(items), [], card, seconds)
    if new:
        _sweep_partial_writes(plan)
    by_key = {**plan.done, **{r.item: r for r in new}}
    ordered = [by_key[i.key] for i in items if i.key in by_key]
    write_manifest(plan.vdir, ordered, settings)
    card = build_card(entry, plan.version, ordered, _split_counts(ordered), _vocabularies(ordered), _provenance())
    write_card(plan.vdir, card, settings)  # last: from here on the version exists for readers
    report = IngestReport(entry.name, plan.version, plan.vdir, len(items), len(plan.todo), len(plan.done))
    report.failed = [r for r in ordered if not r.ok]
    report.card, report.seconds = card, time.perf_counter() - plan.t0
    report.retried = [r.rel for r in new if r.ok and r.attempt > 1]
    return report


def _provenance() -> dict:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "schema_version": SCHEMA_VERSION,
        "algorithm_version": ALGORITHM_VERSION,
        "code_version": __version__,
        "git_commit": code_commit(),
        "row_schema": RowSchema.current(),
    }


def _sweep_partial_writes(plan: Plan) -> None:
    """Delete the temp files of writes a dead worker never finished (local stores; on object stores an unfinished
    upload never becomes an object). Runs after every task of the run has ended, so none is still being written."""
    fs, path = filesystem(plan.vdir, plan.settings)
    if is_local_fs(fs):
        for f in fs.find(path):
            if ".tmp-" in f.rsplit("/", 1)[-1]:
                fs.rm(f)


def _split_counts(records: list[ItemRecord]) -> dict[str, int]:
    total: Counter = Counter()
    for r in records:
        total.update(r.splits)
    return dict(sorted(total.items()))


def _vocabularies(records: list[ItemRecord]) -> Vocabulary:
    ok = [r for r in records if r.ok and r.rows]
    regions: Counter = Counter()
    for r in ok:
        regions.update(r.regions)
    return Vocabulary(
        sessions=sorted({s for r in ok for s in r.all_sessions()}),
        subjects=sorted({s for r in ok for s in r.all_subjects()}),
        species=sorted({r.species for r in ok if r.species}),
        tasks=sorted({r.task for r in ok if r.task}),
        regions=dict(sorted(regions.items())),
    )
