"""The typed records of a dataset version: one ``ItemRecord`` per ingested item, and the ``DatasetCard``.

The card (``_dataset.json``) is the contract between ingest and everything after it: readers find the row parts,
the side tables, the split counts and the vocabularies there, never by listing directories. It is written last,
so a version without it does not exist for readers. Both records are versioned pydantic models: a reader refuses a
card from a newer format instead of misreading it, and old cards read on: before ``card_version`` as version 1, and
a version-1 card's ``schema`` (the Arrow schema as text) as the ``schema`` section of version 2 (which adds the
column table).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neurobridge.catalog import CatalogEntry, IngestConfig
from neurobridge.config import Settings
from neurobridge.storage import StoreError, filesystem, join, read_json, write_bytes_atomic, write_json_atomic
from neurobridge.store.schema import MANIFEST_SCHEMA, SAMPLE_SCHEMA, SCHEMA_VERSION, describe

CARD = "_dataset.json"
MANIFEST = "_manifest.parquet"
ITEMS = "_items"
CARD_VERSION = 2  # 2: `status` first, `schema` a section with the column table (1: the Arrow schema as text)


class ItemRecord(BaseModel):
    """What ingest learnt about one item: its status (with the reason when failed), its part and its counts.

    Written by the worker after its part is committed, so a rerun skips finished items even if the driver died.
    Reader-specific counts (Pile rows skipped, units removed by a filter, TVSD bytes read) go to ``stats``.
    """

    model_config = ConfigDict(extra="forbid")

    item: str
    uri: str
    rel: str
    status: Literal["ok", "failed"] = "failed"
    error: str | None = None
    session: str | None = None
    subject: str | None = None
    species: str | None = None
    task: str | None = None
    part: str | None = None
    rows: int = 0
    units: int = 0
    tokens: int = 0
    spikes: int = 0
    clipped: int = 0
    dropped_windows: int = 0
    excluded_windows: int = 0
    checksum: str | None = None
    seconds: float | None = None
    cpu_seconds: float | None = None
    attempt: int = 1
    sessions: list[str] = Field(default_factory=list)
    subjects: list[str] = Field(default_factory=list)
    splits: dict[str, int] = Field(default_factory=dict)
    regions: dict[str, int] = Field(default_factory=dict)
    side_outputs: dict[str, int] = Field(default_factory=dict, description="side table name → rows written")
    meta: dict[str, Any] | None = Field(None, description="listing metadata (e.g. the Allen session type)")
    stats: dict[str, Any] = Field(default_factory=dict, description="reader-specific counts")

    @model_validator(mode="before")
    @classmethod
    def _fold_stats(cls, data: Any) -> Any:
        """Records written before ``stats`` existed kept reader counts at the top level: fold them in."""
        if isinstance(data, dict):
            known = set(cls.model_fields)
            extra = {k: v for k, v in data.items() if k not in known}
            if extra:
                data = {k: v for k, v in data.items() if k in known}
                data["stats"] = {**extra, **(data.get("stats") or {})}
        return data

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def all_sessions(self) -> list[str]:
        return self.sessions or ([self.session] if self.session else [])

    def all_subjects(self) -> list[str]:
        return self.subjects or ([self.subject] if self.subject else [])


class CardCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: int = 0
    items_ok: int = 0
    items_failed: int = 0
    rows: int = 0
    tokens: int = 0
    spikes: int = 0
    clipped: int = 0
    sessions: int = 0
    units: int = 0
    excluded_windows: int = 0


class SideOutput(BaseModel):
    files: list[str] = Field(default_factory=list)
    rows: int = 0


class FailedItem(BaseModel):
    item: str
    uri: str
    error: str | None = None


class Vocabulary(BaseModel):
    """The context vocabularies of a version, read by training without scanning rows."""

    sessions: list[str] = Field(default_factory=list)
    subjects: list[str] = Field(default_factory=list)
    species: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    regions: dict[str, int] = Field(default_factory=dict, description="region → units")


class RowSchema(BaseModel):
    """The card's ``schema`` section: the rows' Arrow schema as text and one entry per column (type, layout,
    units, when null, description), the same table as the Parquet field metadata and docs/store.md."""

    arrow: str = ""
    columns: list[dict[str, str]] = Field(default_factory=list)

    @classmethod
    def current(cls) -> RowSchema:
        return cls(
            arrow=SAMPLE_SCHEMA.to_string(show_field_metadata=False, show_schema_metadata=False), columns=describe()
        )


class DatasetCard(BaseModel):
    """``_dataset.json``: what a version holds and how it was made. ``status`` comes first, so a reader of the
    file sees "partial" before anything else when items failed."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Literal["complete", "partial"] = "complete"
    card_version: int = CARD_VERSION
    dataset: str
    version: str
    created: str
    schema_version: int
    algorithm_version: int
    code_version: str
    git_commit: str | None = None
    kind: str
    entry: dict[str, Any] = Field(description="the catalog entry as ingested (JSON)")
    row_schema: RowSchema = Field(default_factory=RowSchema, alias="schema", description="the rows' columns")
    files: list[str] = Field(default_factory=list, description="row parts, relative to the version folder")
    counts: CardCounts = CardCounts()
    side_outputs: dict[str, SideOutput] = Field(default_factory=dict)
    splits: dict[str, int] = Field(default_factory=dict)
    split_rule: dict[str, Any] = Field(default_factory=dict)
    vocabularies: Vocabulary = Vocabulary()
    failed: list[FailedItem] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _schema_section(cls, data: Any) -> Any:
        """A version-1 card's ``schema`` is the Arrow schema as text: it becomes the section, with the column
        table of its schema version when this code documents that version."""
        if isinstance(data, dict) and isinstance(data.get("schema"), str):
            same = data.get("schema_version") == SCHEMA_VERSION
            data = {**data, "schema": {"arrow": data["schema"], "columns": describe() if same else []}}
        return data

    @model_validator(mode="after")
    def _known_version(self) -> DatasetCard:
        if self.card_version > CARD_VERSION:
            raise ValueError(
                f"card format {self.card_version} is newer than this code reads ({CARD_VERSION}): upgrade neurobridge"
            )
        self.status = "partial" if self.counts.items_failed > 0 else "complete"  # derived, never trusted from file
        return self

    @property
    def ingest(self) -> IngestConfig:
        """The ingest settings the rows were made with (bin width, windows, split rule)."""
        return IngestConfig.model_validate(self.entry.get("ingest") or {})

    @property
    def bin_ms(self) -> float:
        return float(self.ingest.bin_ms)

    @property
    def partial(self) -> bool:
        """Some items failed: the version holds only part of its sources."""
        return self.counts.items_failed > 0

    def split_rows(self, split: str | None = None) -> int:
        return int(self.splits.get(split, 0)) if split else self.counts.rows

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def read_card(fs, path: str) -> DatasetCard:
    try:
        return DatasetCard.model_validate(read_json(fs, path))
    except (ValueError, json.JSONDecodeError) as err:
        raise StoreError(f"{path}: not a readable dataset card: {err}") from None


def build_card(
    entry: CatalogEntry, version: str, records: list[ItemRecord], splits: dict, vocab: Vocabulary, provenance: dict
) -> DatasetCard:
    """The card of a version from its item records; ``provenance``: created, code and git versions, schemas."""
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    counts = CardCounts(
        items=len(records),
        items_ok=len(ok),
        items_failed=len(failed),
        rows=sum(r.rows for r in ok),
        tokens=sum(r.tokens for r in ok),
        spikes=sum(r.spikes for r in ok),
        clipped=sum(r.clipped for r in ok),
        sessions=len({s for r in ok if r.rows for s in r.all_sessions()}),
        units=sum(r.units for r in ok),
        excluded_windows=sum(r.excluded_windows for r in ok),  # by window.exclude (blanks)
    )
    return DatasetCard(
        dataset=entry.name,
        version=version,
        kind=entry.kind,
        entry=entry.model_dump(mode="json"),
        files=sorted(r.part for r in ok if r.part),
        counts=counts,
        side_outputs=_side_outputs(ok),
        splits=splits,
        split_rule=entry.ingest.split.model_dump(),
        vocabularies=vocab,
        failed=[FailedItem(item=r.item, uri=r.uri, error=r.error) for r in failed],
        **provenance,
    )


def _side_outputs(ok: list[ItemRecord]) -> dict[str, SideOutput]:
    """Tables written beside the rows (``units``, TVSD ``responses`` …): name → files and row count."""
    out: dict[str, SideOutput] = {}
    for r in ok:
        for name, rows in r.side_outputs.items():
            side = out.setdefault(name, SideOutput())
            side.files.append(f"{name}/part-{r.item}.parquet")
            side.rows += rows
    return {k: SideOutput(files=sorted(v.files), rows=v.rows) for k, v in sorted(out.items())}


def write_card(vdir: str, card: DatasetCard, settings: Settings) -> None:
    fs, path = filesystem(join(vdir, CARD), settings)
    write_json_atomic(fs, path, card.to_json(), sort_keys=False)  # field order: status first


def write_record(rec: ItemRecord, vdir: str, settings: Settings) -> None:
    fs, path = filesystem(join(vdir, ITEMS, f"{rec.item}.json"), settings)
    write_json_atomic(fs, path, rec.model_dump(mode="json"))


def load_item_records(vdir: str, settings: Settings) -> dict[str, ItemRecord]:
    fs, path = filesystem(join(vdir, ITEMS), settings)
    if not fs.exists(path):
        return {}
    records = {}
    for f in fs.glob(f"{path}/*.json"):
        try:
            rec = ItemRecord.model_validate(read_json(fs, f))
        except (OSError, ValueError):
            continue  # a torn record counts as not done
        records[rec.item] = rec
    return records


def write_manifest(vdir: str, records: list[ItemRecord], settings: Settings) -> None:
    rows = [{name: getattr(rec, name, None) for name in MANIFEST_SCHEMA.names} for rec in records]
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fs, path = filesystem(join(vdir, MANIFEST), settings)
    write_bytes_atomic(fs, path, sink.getvalue().to_pybytes())
