"""Catalog entries: what a dataset is, where it lives, and how to ingest it.

One YAML file per source (a file may also hold a list under ``entries:``). Validation errors name the file, the
entry, the field and a fix, because the people editing these files are neuroscientists, not pydantic users.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from neurobridge.config import Settings, get_settings
from neurobridge.storage import is_remote, safe_name

KINDS = ("nwb", "alf", "tvsd", "pile")


class CatalogError(ValueError):
    """A catalog file or entry that cannot be used; the message says where and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WindowConfig(_Strict):
    """How a session is cut into sample windows."""

    mode: Literal["auto", "intervals", "chunks"] = Field(
        "auto", description="auto: aligned to `intervals` when the session has that table, else fixed chunks"
    )
    intervals: str = Field("trials", description="intervals table (NWB) or ALF object holding the events")
    align: str = Field("start_time", description="column with the alignment time of each interval")
    pre_s: float = Field(0.0, ge=0, description="seconds before the alignment time")
    post_s: float | None = Field(None, gt=0, description="seconds after; None: shortest interval duration")
    chunk_s: float = Field(1.0, gt=0, description="length of fixed chunks when there are no intervals")
    stimulus_column: str | None = Field(None, description="interval column identifying the stimulus")
    stimulus_prefix: str | None = Field(None, description="namespace for stimulus ids, e.g. allen_ns")
    exclude: dict[str, list[float | str]] = Field(
        default_factory=dict,
        description="interval column → values whose intervals are dropped (counted), e.g. {frame: [-1]} (blanks)",
    )


class SplitConfig(_Strict):
    """Deterministic train/val/test assignment."""

    rule: Literal["auto", "column", "hash"] = Field(
        "auto", description="auto: the file's `split` column when it holds 2+ of train/val/test, else hash"
    )
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    salt: str = "neurobridge"

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self


class UnitRule(_Strict):
    """Keep a unit only when its value in one units-table column passes every bound given (NaN fails)."""

    min: float | None = Field(None, description="keep units with value >= min")
    max: float | None = Field(None, description="keep units with value <= max")
    one_of: list[str | float] | None = Field(None, description="keep units whose value is one of these")
    optional: bool = Field(False, description="skip this rule (and say so in the item record) if the column is absent")

    @model_validator(mode="after")
    def _some_bound(self) -> UnitRule:
        if self.min is None and self.max is None and self.one_of is None:
            raise ValueError("a unit rule needs at least one of min, max, one_of")
        return self


class IngestConfig(_Strict):
    bin_ms: float = Field(20.0, gt=0, le=10_000)
    window: WindowConfig = WindowConfig()
    split: SplitConfig = SplitConfig()
    good_units_only: bool = Field(False, description="keep only units labelled good (ALF quality label)")
    good_label_min: float = Field(
        1.0, ge=0, le=1, description="IBL label = fraction of quality metrics passed; 'good' means ≥ this"
    )
    chunk_spikes: int = Field(2_000_000, ge=10_000, description="spikes held in memory at once per worker")
    behavior: list[str] | None = Field(
        None, description="continuous behaviour series to bin (e.g. hand_vel, wheel.velocity); None: all found"
    )
    trial_behavior: list[str] = Field(
        default_factory=lambda: ["choice", "feedbackType", "contrastLeft", "contrastRight", "probabilityLeft"],
        description="per-trial columns of the aligned intervals table, repeated over each window's bins",
    )
    unit_filter: dict[str, UnitRule] = Field(
        default_factory=dict,
        description="units-table column → rule; e.g. allensdk's defaults {isi_violations: {max: 0.5}, ...}",
    )


class OneConfig(_Strict):
    """ONE-api access for IBL: remote (Alyx) for users, local mode on a cache directory for tests."""

    mode: Literal["local", "remote"] = "remote"
    base_url: str | None = "https://openalyx.internationalbrainlab.org"
    collection: str | None = Field(
        None, description="probe collection or glob, e.g. alf/probe00/pykilosort or alf/probe0?/pykilosort"
    )
    search: dict[str, str | list[str]] = Field(default_factory=dict, description="ONE.search filters")


class SourceStorage(_Strict):
    """How to reach the entry's raw URI on S3; credentials never go here (they come from the provider chain)."""

    anon: bool = Field(False, description="unsigned requests: public buckets (Allen, DANDI, IBL open data)")
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for this entry; 'aws' forces AWS even when NB_S3_ENDPOINT is set"
    )
    requester_pays: bool = False


class DandiConfig(_Strict):
    """A dandiset version resolved through the DANDI API (assets read from the public bucket by range)."""

    dandiset: str = Field(description="six-digit dandiset id, e.g. 000128")
    version: str = Field("draft", description="published version, e.g. 0.220113.0400 (draft changes)")
    glob: str = Field("*.nwb", description="asset path glob, e.g. sub-Jenkins/*.nwb")
    resolve: Literal["api", "mirror"] = Field(
        "api", description="api: list assets online with the dandi client; mirror: read `uri`, a local/S3 copy"
    )


class PileConfig(_Strict):
    """Neural Pile reading options (kind ``pile``)."""

    species_map: dict[str, str] = Field(
        default_factory=dict, description="source_dataset value → species; rows of other datasets get `species`"
    )
    val_unit: Literal["segment", "session"] = Field(
        "segment",
        description="what the val hash keeps together: a whole segment (like the publisher's test split) or every "
        "segment of a session (stricter: no session is seen in both train and val)",
    )
    on_bad_row: Literal["fail", "skip"] = Field(
        "fail", description="fail: a bad row fails its shard; skip: drop the row and count it in the item record"
    )
    block_cells: int = Field(2_000_000, ge=1_000, description="cells [windows × units × bins] per window block")


class ChannelRange(_Strict):
    """Channels ``first``..``last`` (1-based, inclusive, MATLAB numbering) recorded in ``region``."""

    first: int = Field(ge=1)
    last: int = Field(ge=1)
    region: str = Field(min_length=1)

    @model_validator(mode="after")
    def _order(self) -> ChannelRange:
        if self.last < self.first:
            raise ValueError(f"channel range {self.first}-{self.last} ends before it starts")
        return self


def _tvsd_regions() -> dict[str, list[ChannelRange]]:
    """The published TVSD array-to-area assignment (Papale et al. 2025)."""
    spans = {
        "monkeyN": [(1, 512, "V1"), (513, 768, "V4"), (769, 1024, "IT")],
        "monkeyF": [(1, 512, "V1"), (513, 832, "IT"), (833, 1024, "V4")],
    }
    return {m: [ChannelRange(first=a, last=b, region=r) for a, b, r in s] for m, s in spans.items()}


class DataladSource(_Strict):
    """Where a DataLad dataset is cloned from; only the files an entry needs are ever fetched (``datalad get``)."""

    url: str | None = Field(
        "https://gin.g-node.org/paolo_papale/TVSD",
        description="clone source (URL, or a path; relative paths resolve under NB_RAW); None: uri holds plain files",
    )


class TvsdFiles(_Strict):
    """File names inside each monkey folder; exactly these are fetched, never the raw recordings."""

    mua: str = "THINGS_MUA_trials.mat"
    normalized: str = "THINGS_normMUA.mat"
    images: str = "_logs/things_imgs.mat"


class TvsdConfig(_Strict):
    """TVSD reading: the DataLad source, per-monkey channel → region ranges, trial filtering, side outputs."""

    datalad: DataladSource = DataladSource()
    files: TvsdFiles = TvsdFiles()
    regions: dict[str, list[ChannelRange]] = Field(
        default_factory=_tvsd_regions, description="monkey folder → channel ranges; every channel must be covered"
    )
    correct_only: bool = Field(True, description="keep only trials with ALLMAT correct == 1 (fixation held)")
    responses: bool = Field(True, description="also write the normalised per-image responses (THINGS_normMUA.mat)")
    chunk_mb: float = Field(64.0, gt=0, le=4096, description="raw MUA read per block (bounds worker memory)")

    @field_validator("regions")
    @classmethod
    def _no_overlap(cls, v: dict[str, list[ChannelRange]]) -> dict[str, list[ChannelRange]]:
        for monkey, ranges in v.items():
            spans = sorted((r.first, r.last) for r in ranges)
            for (a0, a1), (b0, b1) in zip(spans, spans[1:], strict=False):
                if b0 <= a1:
                    raise ValueError(f"{monkey}: channel ranges {a0}-{a1} and {b0}-{b1} overlap")
        return v


class EcephysCache(_Strict):
    """An allensdk EcephysProjectCache tree: a sessions CSV at the root, one NWB per session below it."""

    sessions_table: str = Field("sessions.csv", description="CSV with an `id` column, relative to the entry uri")
    session_path: str = Field("session_{id}/session_{id}.nwb", description="session NWB path; {id} is the session id")
    session_types: list[str] = Field(
        default_factory=list, description="list only sessions whose session_type is one of these (empty: all)"
    )
    metadata: list[str] = Field(
        default_factory=lambda: ["session_type", "specimen_id", "age_in_days", "sex", "full_genotype"],
        description="sessions-table columns carried into each item's record",
    )
    manifest: str | None = Field(
        None, description="allensdk manifest.json: sessions are listed by allensdk in its own environment"
    )
    allensdk_python: str | None = Field(
        None, description="interpreter of the allensdk environment (default: $NB_ALLENSDK_PYTHON)"
    )


class NwbOptions(_Strict):
    """Where an NWB file keeps what the reader needs; defaults fit DANDI/NLB and the Allen Visual Coding files."""

    region_columns: list[str] = Field(
        default_factory=lambda: ["ecephys_structure_acronym", "location", "brain_area", "region"],
        description="region label columns, first present wins (units table, then electrodes table)",
    )
    peak_channel_column: str = Field(
        "peak_channel_id", description="units column holding the electrodes-table id of each unit's peak channel"
    )
    cache: EcephysCache | None = Field(None, description="list sessions from an EcephysProjectCache layout")


class Selection(_Strict):
    include: list[str] = Field(default_factory=list, description="glob patterns below uri (kind default if empty)")
    exclude: list[str] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1, description="take only the first N items (sorted)")


class CatalogEntry(_Strict):
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
    one: OneConfig | None = None
    storage: SourceStorage = SourceStorage()
    dandi: DandiConfig | None = None
    pile: PileConfig | None = Field(None, description="Neural Pile options (kind pile); defaults when absent")
    tvsd: TvsdConfig | None = Field(None, description="TVSD reader settings (kind tvsd); defaults: the GIN dataset")
    nwb: NwbOptions | None = None
    source_file: str | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        safe_name(v)
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            hint = difflib.get_close_matches(v, KINDS, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"unknown kind {v!r}{extra} (valid kinds: {', '.join(KINDS)})")
        return v

    @model_validator(mode="after")
    def _nwb_only(self) -> CatalogEntry:
        """NWB options on another kind would be silently ignored: refuse them."""
        if self.kind != "nwb" and (self.nwb is not None or self.ingest.unit_filter):
            field = "nwb" if self.nwb is not None else "ingest.unit_filter"
            raise ValueError(f"{field} applies to kind 'nwb' only (this entry is {self.kind!r})")
        return self

    def resolved_uri(self, settings: Settings | None = None) -> str:
        """Absolute URI: relative catalog URIs live under the raw root (``NB_RAW``)."""
        uri = _expand(self.uri)
        if is_remote(uri) or os.path.isabs(uri):
            return uri
        if uri.startswith("file://"):
            return uri[len("file://") :]
        settings = settings or get_settings()
        root = settings.raw_root.rstrip("/")
        return f"{root}/{uri}"

    def settings_for(self, settings: Settings) -> Settings:
        """Settings that read this entry's raw data with its own S3 options."""
        opts = self.storage.model_dump(exclude_defaults=True)
        settings = settings.with_source(self.resolved_uri(settings), opts)
        if self.dandi is not None and self.dandi.resolve == "api":  # DANDI's bucket is public
            settings = settings.with_source("s3://dandiarchive/", {"anon": True, "endpoint_url": "aws", **opts})
        return settings


def _expand(uri: str) -> str:
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


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names (as written in files: aliases where set) at the location of an error, for hints."""

    def fields(m: type[BaseModel]) -> dict:
        return {(f.alias or n): f for n, f in m.model_fields.items()}

    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str) or part not in fields(current):
            return []
        ann = fields(current)[part].annotation
        args = getattr(ann, "__args__", ())
        current = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(fields(current)) if current else []


def describe_validation_error(err: ValidationError, model: type[BaseModel], where: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        field = ".".join(str(p) for p in loc) or "(entry)"
        if e["type"] == "extra_forbidden":
            valid = [f for f in _field_names(model, loc) if f != "source_file"]
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"valid fields here: {', '.join(valid)}"
            lines.append(f"{where}: unknown field {field!r}; {fix}")
        elif e["type"] == "missing":
            lines.append(f"{where}: field {field!r} is required; add it")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: field {field!r}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_entries(data: object, source: str) -> list[CatalogEntry]:
    if isinstance(data, dict) and "entries" in data:
        raw = data["entries"]
    elif isinstance(data, list):
        raw = data
    else:
        raw = [data]
    if not isinstance(raw, list) or not raw:
        raise CatalogError(f"{source}: expected an entry mapping or a non-empty list under 'entries:'")
    entries, errors = [], []
    for i, item in enumerate(raw):
        label = f"{source}: entry {item.get('name', i) if isinstance(item, dict) else i}"
        if not isinstance(item, dict):
            errors.append(f"{label}: expected a mapping of fields, got {type(item).__name__}")
            continue
        try:
            entries.append(CatalogEntry(**item, source_file=source))
        except ValidationError as err:
            errors.append(describe_validation_error(err, CatalogEntry, label))
    if errors:
        raise CatalogError("\n".join(errors))
    return entries


def load_file(path: str | Path) -> list[CatalogEntry]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CatalogError(f"{path}: no such catalog file") from None
    except yaml.YAMLError as err:
        raise CatalogError(f"{path}: not valid YAML: {err}") from None
    return parse_entries(data, str(path))


def catalog_dir() -> Path:
    return Path(os.environ.get("NB_CATALOG", "catalog"))


def load_catalog(directory: str | Path | None = None) -> dict[str, CatalogEntry]:
    """All entries of a catalog directory by name; every file's errors are reported together."""
    directory = Path(directory) if directory else catalog_dir()
    if not directory.is_dir():
        raise CatalogError(f"{directory}: catalog directory not found (set NB_CATALOG or run from the repo root)")
    entries: dict[str, CatalogEntry] = {}
    errors = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            for entry in load_file(path):
                if entry.name in entries:
                    errors.append(f"{path}: entry name {entry.name!r} also in {entries[entry.name].source_file}")
                entries[entry.name] = entry
        except CatalogError as err:
            errors.append(str(err))
    if errors:
        raise CatalogError("\n".join(errors))
    return entries


def resolve(ref: str, directory: str | Path | None = None) -> list[CatalogEntry]:
    """Entries named by ``ref``: a YAML path, a catalog file stem (``demo``), or an entry name."""
    if ref.endswith((".yaml", ".yml")) or os.sep in ref:
        return load_file(ref)
    directory = Path(directory) if directory else catalog_dir()
    file = directory / f"{ref}.yaml"
    if file.exists():
        return load_file(file)
    entries = load_catalog(directory)
    if ref in entries:
        return [entries[ref]]
    names = sorted(entries) + sorted(p.stem for p in directory.glob("*.yaml"))
    hint = difflib.get_close_matches(ref, names, n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    raise CatalogError(f"no catalog file or entry named {ref!r} in {directory}{extra}")
