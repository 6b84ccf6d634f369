"""The token store's schemas: one row = one sample window, plus the side tables; see docs/store.md.

The rows describe themselves: each field of ``SAMPLE_SCHEMA`` (and ``UNITS_SCHEMA``) carries its layout, units and
when it is null as Arrow field metadata, and the whole table as JSON in the schema metadata (``neurobridge.columns``,
which DuckDB shows through ``parquet_kv_metadata``), so a reader of a bare Parquet part learns that ``counts`` is a
flat units × bins grid without finding this file. The card repeats the table (``DatasetCard.schema``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pyarrow as pa

SCHEMA_VERSION = 1
# Bumped when binning/windowing semantics change, so that dataset versions change with them.
ALGORITHM_VERSION = 1


@dataclass(frozen=True)
class Column:
    """What a column holds, for readers who have only the data: ``layout`` (how a list is laid out), ``units``,
    ``nullable`` (never, or when it is null) and a one-line ``description``."""

    name: str
    type: pa.DataType
    description: str
    layout: str = "scalar"
    units: str = ""
    nullable: str = "never"

    def field(self) -> pa.Field:
        meta = {"description": self.description, "layout": self.layout, "units": self.units, "null": self.nullable}
        return pa.field(self.name, self.type, metadata={k: v for k, v in meta.items() if v})

    def doc(self) -> dict[str, str]:
        return {**{k: v for k, v in asdict(self).items() if k != "type"}, "type": str(self.type)}


GRID = "flat row-major [n_units × n_bins]: cell (unit u, bin b) is element u * n_bins + b (0-based)"
SAMPLE_COLUMNS = (
    Column("dataset", pa.string(), "catalog entry name"),
    Column("session", pa.string(), "recording session (from the file, else the entry)"),
    Column("subject", pa.string(), "subject id (from the file, else the entry)"),
    Column("species", pa.string(), "species, e.g. Macaca mulatta"),
    Column("task", pa.string(), "task name (from the entry)"),
    Column(
        "sample_id",
        pa.string(),
        "unique, deterministic window id: <dataset>/<item key>/<window name>, e.g. "
        "sim_nwb/sub-monkey01_ses-s01.nwb-1a2b3c4d/trials-00012",
    ),
    Column("split", pa.string(), "train, val or test (none: a file's split value outside those three)"),
    Column(
        "t_start",
        pa.float64(),
        "window start: session time for NWB/ALF (alignment time - pre_s, or the chunk start), time from the "
        "segment start for the Pile; NaN for TVSD (no session clock)",
        units="s",
    ),
    Column("bin_ms", pa.float32(), "bin width", units="ms"),
    Column("n_units", pa.int32(), "units (rows of the grid) in this window"),
    Column("n_bins", pa.int32(), "time bins (columns of the grid) in this window"),
    Column(
        "counts",
        pa.list_(pa.uint16()),
        "spike counts per unit and bin; values above 65535 are clipped (the card's counts.clipped)",
        layout=GRID,
        units="spikes per bin",
        nullable="null for MUA rows (then mua is set)",
    ),
    Column(
        "mua",
        pa.list_(pa.float32()),
        "continuous signal per unit and bin (TVSD: the mean of the 1 kHz normalised MUA samples in each bin)",
        layout=GRID,
        units="as the source (TVSD: normalised MUA)",
        nullable="null for spike-count rows (then counts is set)",
    ),
    Column(
        "unit_ids",
        pa.list_(pa.string()),
        "unit ids namespaced <dataset>/<session>/<raw unit id>, in grid order (by region, then raw id)",
        layout="[n_units]",
    ),
    Column("unit_regions", pa.list_(pa.string()), "region acronym per unit ('unknown' if absent)", layout="[n_units]"),
    Column(
        "stimulus_id",
        pa.string(),
        "<prefix>/<id> of the image shown, e.g. allen_ns/frame_017 or a THINGS path",
        nullable="null without a stimulus",
    ),
    Column(
        "repeat",
        pa.int32(),
        "NWB: 0-based occurrence of the stimulus in the session; TVSD: ALLMAT's rep as stored",
        nullable="null without a stimulus",
    ),
    Column(
        "behavior",
        pa.list_(pa.float32()),
        "behaviour per bin: continuous series averaged per bin (NaN where a bin has no sample), per-trial values "
        "repeated over the bins",
        layout="flat row-major [n_bins × len(behavior_names)]: element b * len(behavior_names) + k (0-based)",
        units="as the source, per name",
        nullable="null when the entry has no behaviour",
    ),
    Column(
        "behavior_names",
        pa.list_(pa.string()),
        "behaviour names in the order of behavior's inner axis, e.g. hand_vel.0, wheel.velocity, trial.choice",
        layout="[len(behavior_names)]",
        nullable="null when behavior is null",
    ),
)

UNITS_COLUMNS = (
    Column("dataset", pa.string(), "catalog entry name"),
    Column("session", pa.string(), "recording session"),
    Column("unit_id", pa.string(), "namespaced unit id, as in the rows' unit_ids"),
    Column("raw_id", pa.string(), "the unit's id in the source file"),
    Column("index", pa.int32(), "position in the session's [units × bins] grid (0-based)"),
    Column("region", pa.string(), "region acronym ('unknown' if absent)"),
    Column("heldout", pa.bool_(), "NLB's held-out flag (co-smoothing)", nullable="null when the source has none"),
)


def schema_of(columns: tuple[Column, ...]) -> pa.Schema:
    """An Arrow schema whose fields and schema metadata carry the column documentation."""
    meta = {
        "neurobridge.schema_version": str(SCHEMA_VERSION),
        "neurobridge.columns": json.dumps([c.doc() for c in columns]),
    }
    return pa.schema([c.field() for c in columns], metadata=meta)


def describe(columns: tuple[Column, ...] = SAMPLE_COLUMNS) -> list[dict[str, str]]:
    """The column table as plain dicts (the card's ``schema.columns``)."""
    return [c.doc() for c in columns]


def markdown_table(columns: tuple[Column, ...] = SAMPLE_COLUMNS) -> str:
    """The column table as docs/store.md prints it (a test keeps the page and this code the same)."""
    lines = ["| column | type | layout | units | null | content |", "|---|---|---|---|---|---|"]
    for c in columns:
        cells = (c.name, str(c.type), c.layout, c.units or "-", c.nullable, c.description)
        text = [f"`{x}`" if i < 2 else x.replace("<", "\\<") for i, x in enumerate(cells)]  # <dataset>: not HTML
        lines.append("| " + " | ".join(text) + " |")
    return "\n".join(lines)


SAMPLE_SCHEMA = schema_of(SAMPLE_COLUMNS)

# Side table ``units/``: one row per unit of each session, in token-grid order. Unit facts that are not per
# window live here (the NLB held-out flag used by co-smoothing, raw ids), so rows stay compact.
UNITS_SCHEMA = schema_of(UNITS_COLUMNS)

MANIFEST_SCHEMA = pa.schema(
    [
        ("item", pa.string()),
        ("uri", pa.string()),
        ("rel", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("session", pa.string()),
        ("subject", pa.string()),
        ("part", pa.string()),
        ("rows", pa.int64()),
        ("units", pa.int64()),
        ("tokens", pa.int64()),
        ("spikes", pa.int64()),
        ("clipped", pa.int64()),
        ("dropped_windows", pa.int64()),
        ("checksum", pa.string()),
        ("seconds", pa.float64()),
    ]
)

# TVSD side outputs (``<version>/tvsd_responses/`` and ``<version>/tvsd_units/``). ``response`` holds one value per
# channel in the rows' unit order (region-ordered); ``tvsd_units`` maps its positions to unit ids, regions and the
# per-channel quality measures of THINGS_normMUA.mat (kept as lists: their trailing MATLAB dimensions vary).
TVSD_RESPONSES_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("session", pa.string()),
        ("subject", pa.string()),
        ("stimulus_id", pa.string()),
        ("split", pa.string()),
        ("repeat", pa.int32()),  # null: averaged over repeats (train_MUA, test_MUA); 1-based for test_MUA_reps
        ("response", pa.list_(pa.float32())),
    ],
    metadata={"neurobridge.schema_version": str(SCHEMA_VERSION)},
)

TVSD_UNITS_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("session", pa.string()),
        ("subject", pa.string()),
        ("position", pa.int32()),  # index into `response` and into the rows' unit axis
        ("unit_id", pa.string()),
        ("channel", pa.int32()),  # 1-based channel number in the MATLAB files
        ("region", pa.string()),
        ("reliab", pa.list_(pa.float32())),
        ("snr", pa.list_(pa.float32())),
        ("lats", pa.list_(pa.float32())),
        ("oracle", pa.list_(pa.float32())),
    ],
    metadata={"neurobridge.schema_version": str(SCHEMA_VERSION)},
)

# fMRI side outputs. ``units/`` holds the columns of ``UNITS_SCHEMA`` first (so every reader of units tables works)
# plus what a voxel is: its volume coordinates, noise ceilings and every ROI that holds it (``region`` is the one
# the rows use). ``stimuli/`` holds one row per image: its concept, official split and how often it was shown.
FMRI_UNITS_SCHEMA = pa.schema(
    [
        *UNITS_SCHEMA,
        ("subject", pa.string()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("z", pa.int32()),
        ("nc_singletrial", pa.float32()),
        ("nc_testset", pa.float32()),
        ("rois", pa.list_(pa.string())),
    ],
    metadata={"neurobridge.schema_version": str(SCHEMA_VERSION)},
)

STIMULI_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("session", pa.string()),
        ("subject", pa.string()),
        ("stimulus_id", pa.string()),
        ("concept", pa.string()),
        ("image", pa.string()),  # the file name the source lists
        ("split", pa.string()),
        ("presentations", pa.int32()),
    ],
    metadata={"neurobridge.schema_version": str(SCHEMA_VERSION)},
)
