"""The token store's row schema (one row = one sample window); see ARCHITECTURE.md."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
# Bumped when binning/windowing semantics change, so that dataset versions change with them.
ALGORITHM_VERSION = 1

SAMPLE_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("session", pa.string()),
        ("subject", pa.string()),
        ("species", pa.string()),
        ("task", pa.string()),
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("t_start", pa.float64()),
        ("bin_ms", pa.float32()),
        ("n_units", pa.int32()),
        ("n_bins", pa.int32()),
        ("counts", pa.list_(pa.uint16())),
        ("mua", pa.list_(pa.float32())),
        ("unit_ids", pa.list_(pa.string())),
        ("unit_regions", pa.list_(pa.string())),
        ("stimulus_id", pa.string()),
        ("repeat", pa.int32()),
        ("behavior", pa.list_(pa.float32())),
        ("behavior_names", pa.list_(pa.string())),
    ],
    metadata={"neurobridge.schema_version": str(SCHEMA_VERSION)},
)

# Side table ``units/``: one row per unit of each session, in token-grid order. Unit facts that are not per
# window live here (the NLB held-out flag used by co-smoothing, raw ids), so rows stay compact.
UNITS_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("session", pa.string()),
        ("unit_id", pa.string()),  # namespaced, as in the rows' unit_ids
        ("raw_id", pa.string()),
        ("index", pa.int32()),  # position in the session's [units × bins] grid
        ("region", pa.string()),
        ("heldout", pa.bool_()),  # null when the source has no held-out split
    ],
    metadata={"neurobridge.schema_version": str(SCHEMA_VERSION)},
)

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
