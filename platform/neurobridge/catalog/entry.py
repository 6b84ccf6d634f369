"""The fields every catalog entry has, and how an entry of any kind is built, located and versioned.

Kind-specific options live on one subclass per kind (``catalog/kinds.py``); this base knows none of them, so a new
source kind adds a subclass there and a reader file in ``sources/`` and touches nothing here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from neurobridge.catalog.options import IngestConfig, Selection, SourceStorage, Strict
from neurobridge.config import Settings, describe_validation_error, get_settings
from neurobridge.storage import is_remote, safe_name


class CatalogError(ValueError):
    """A catalog file or entry that cannot be used; the message says where and how to fix it."""


# Entry fields that decide the rows of a dataset version (hashed into it); storage, license and prose do not.
ROW_FIELDS = {"name", "kind", "species", "subject", "task", "region_map", "ingest", "selection"}


class CatalogEntry(Strict):
    """One dataset: where it lives, what it is, how to ingest it. Build one with :meth:`of` (or from YAML)."""

    KINDS: ClassVar[dict[str, type[CatalogEntry]]] = {}

    name: str
    kind: str
    uri: str
    description: str = ""
    species: str = "unknown"
    subject: str | None = Field(None, description="default subject when files do not name one")
    task: str = "unknown"
    selection: Selection = Selection()
    region_map: dict[str, str] = Field(default_factory=dict, description="raw region label → acronym")
    region_table: str | None = Field(
        None, description="CSV (any fsspec URI) with id,acronym columns mapping numeric atlas ids (Allen CCF)"
    )
    license: str = "unknown"
    citation: str = ""
    ingest: IngestConfig = IngestConfig()
    storage: SourceStorage = SourceStorage()
    source_file: str | None = Field(None, exclude=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = getattr(cls, "KIND", None)
        if kind:
            CatalogEntry.KINDS[kind] = cls

    @classmethod
    def of(cls, **fields: Any) -> CatalogEntry:
        """The entry of the kind named in ``fields`` (the subclass that knows that kind's options)."""
        kind = fields.get("kind")
        if kind not in CatalogEntry.KINDS:
            raise CatalogError(unknown_kind(kind))
        return CatalogEntry.KINDS[kind](**fields)

    @classmethod
    def from_json(cls, text: str) -> CatalogEntry:
        """An entry serialised with ``model_dump_json`` (how entries travel to Ray workers)."""
        import json

        return cls.of(**json.loads(text))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        safe_name(v)
        return v

    @model_validator(mode="after")
    def _concrete(self) -> CatalogEntry:
        if type(self) is CatalogEntry:
            raise TypeError("build catalog entries with CatalogEntry.of(...): the kind decides the entry's options")
        if self.ingest.unit_filter and not self.accepts_unit_filter():
            raise ValueError(f"ingest.unit_filter applies to kind 'nwb' only (this entry is {self.kind!r})")
        return self

    def accepts_unit_filter(self) -> bool:
        """Whether this kind's reader applies ``ingest.unit_filter`` (else it would be silently ignored)."""
        return False

    def version_spec(self) -> dict[str, Any]:
        """What of this entry decides its rows; the dataset version is a hash of it and the sources' fingerprints.

        Kinds add their own row-changing options (and only when set, so versions of entries without them stay)."""
        return {"entry": {**self.model_dump(include=ROW_FIELDS), "one": None}}

    def resolved_uri(self, settings: Settings | None = None) -> str:
        """Absolute URI: relative catalog URIs live under the raw root (``NB_RAW``)."""
        uri = expand(self.uri)
        if is_remote(uri) or os.path.isabs(uri):
            return uri
        if uri.startswith("file://"):
            return uri[len("file://") :]
        settings = settings or get_settings()
        root = settings.raw_root.rstrip("/")
        return f"{root}/{uri}"

    def at_bin_ms(self, bin_ms: float) -> CatalogEntry:
        """This entry binned at ``bin_ms``, validated as if written so: a model has one bin width, so datasets are
        ingested at the one it needs (a binned source still refuses a width its native bins do not divide)."""
        try:
            return CatalogEntry.of(**(self.model_dump() | {"ingest": self.ingest.model_dump() | {"bin_ms": bin_ms}}))
        except ValidationError as err:
            raise CatalogError(describe_validation_error(err, type(self), f"{self.name} at {bin_ms:g} ms")) from None

    def settings_for(self, settings: Settings) -> Settings:
        """Settings that read this entry's raw data with its own S3 options."""
        opts = self.storage.model_dump(exclude_defaults=True)
        return settings.with_source(self.resolved_uri(settings), opts)


def _entry_of(value: Any) -> Any:
    return CatalogEntry.of(**value) if isinstance(value, dict) else value


# A catalog entry as a field of another config (pipeline stages): the mapping's ``kind`` picks the entry model,
# a discriminated union over every registered kind.
AnyEntry = Annotated[CatalogEntry, BeforeValidator(_entry_of)]


def unknown_kind(kind: object) -> str:
    import difflib

    known = sorted(CatalogEntry.KINDS)
    hint = difflib.get_close_matches(str(kind), known, n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown kind {kind!r}{extra} (valid kinds: {', '.join(known)})"


def expand(uri: str) -> str:
    """Expand ``${VARS}``; ``NB_SHARED_DATA`` defaults to the shared real-data excerpts beside the checkout."""
    defaults = {"NB_SHARED_DATA": str(Path("../shared/data").absolute())}

    def value(m: re.Match) -> str:
        name = m.group(1)
        if name in os.environ:
            return os.environ[name]
        if name in defaults:
            return defaults[name]
        raise CatalogError(f"catalog uri {uri!r} names ${{{name}}}, which is not set")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value, uri)
