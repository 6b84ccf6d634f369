"""Neural Pile-style shards written by the project (tests, demo, bench): rows of 20 ms spike counts drawn from the
simulator's generative model (latent dynamics per region → Poisson counts), in the published row layout.

The real shards cannot be downloaded here, so these stand in for them: same columns and types
(``spike_counts: list<list<uint8>>``, string ids, ``source_dataset``), ``data/train-*`` and ``data/test-*`` names,
several rows per row group.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neurobridge.sim.config import SimConfig, Spec, random_stream
from neurobridge.sim.dynamics import build_model, chunk_rates, latents
from neurobridge.storage import filesystem, is_local_fs

PILE_SCHEMA = pa.schema(
    [
        ("spike_counts", pa.list_(pa.list_(pa.uint8()))),
        ("subject_id", pa.string()),
        ("session_id", pa.string()),
        ("segment_id", pa.string()),
        ("source_dataset", pa.string()),
    ]
)
_PILE_CODE = 6  # spawn-key namespace of the simulator's random streams (sim.py uses 1-5)


@dataclass
class PileRow:
    subject_id: str
    session_id: str
    segment_id: str
    source_dataset: str
    n_units: int
    n_bins: int
    seed: int = 0


def simulate_counts(row: PileRow, bin_ms: float = 20.0, regions: int = 2) -> np.ndarray:
    """``[units, bins]`` uint8 Poisson counts of one row from the simulator's latent-dynamics model."""
    cfg = SimConfig(seed=row.seed, truth_bin_ms=bin_ms, latent_dim=4)
    ident = hashlib.blake2b(f"{row.source_dataset}|{row.subject_id}|{row.session_id}|{row.segment_id}".encode())
    key = (_PILE_CODE, int.from_bytes(ident.digest()[:4], "big"), row.n_units)
    spec = Spec("nwb", row.subject_id, row.session_id, [f"r{i}" for i in range(regions)], row.n_units, key, "", None)
    model = build_model(cfg, spec, row.n_bins * bin_ms / 1000.0)
    lat_rng, spk_rng = random_stream(row.seed, *key, 2), random_stream(row.seed, *key, 3)
    out = np.empty((row.n_units, row.n_bins), dtype=np.uint8)
    x, k = model.x0.copy(), 0
    step = max(64, 2_000_000 // max(row.n_units, 1))
    for a in range(0, row.n_bins, step):
        b = min(row.n_bins, a + step)
        X, x, k = latents(model, a, b, x, lat_rng, k)
        counts = spk_rng.poisson(chunk_rates(model, a, X) * model.dt)
        out[:, a:b] = np.minimum(counts, 255)
    return out


def nested_counts(counts: np.ndarray, type_: pa.DataType = pa.uint8()) -> pa.Array:
    """One row's ``[U, T]`` matrix as a length-1 ``list<list<…>>`` array (no Python loop over cells)."""
    n_units, n_bins = counts.shape
    values = pa.array(np.ascontiguousarray(counts).reshape(-1), type=type_)
    inner = pa.ListArray.from_arrays(pa.array(np.arange(n_units + 1, dtype=np.int32) * n_bins), values)
    return pa.ListArray.from_arrays(pa.array([0, n_units], type=pa.int32()), inner)


def write_shard(uri: str, rows: list[tuple[PileRow, np.ndarray]], row_group_rows: int = 2, settings=None) -> str:
    """Write rows (metadata, ``[U, T]`` counts) as one Parquet shard at ``uri`` (local path or fsspec URI)."""
    fs, path = filesystem(uri, settings)
    if is_local_fs(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f, pq.ParquetWriter(f, PILE_SCHEMA, compression="zstd") as writer:
        for g in range(0, len(rows), row_group_rows):
            group = rows[g : g + row_group_rows]
            columns = {
                "spike_counts": pa.concat_arrays([nested_counts(c) for _, c in group]),
                "subject_id": pa.array([r.subject_id for r, _ in group]),
                "session_id": pa.array([r.session_id for r, _ in group]),
                "segment_id": pa.array([r.segment_id for r, _ in group]),
                "source_dataset": pa.array([r.source_dataset for r, _ in group]),
            }
            writer.write_table(pa.table(columns, schema=PILE_SCHEMA))
    return uri


def demo_rows(seed: int = 0, long_bins: int = 6_000) -> dict[str, list[PileRow]]:
    """Shard name → rows: two source datasets, several subjects and sessions (some split into segments), one
    long row, rows whose length is not a whole number of windows, and a test shard."""
    rng = np.random.default_rng(seed)

    def bins() -> int:
        return int(rng.integers(400, 1_200))

    train0 = [
        PileRow("monkeyA", "s01", "0", "sim_primate_a", 24, long_bins, seed),
        PileRow("monkeyA", "s01", "1", "sim_primate_a", 24, bins(), seed),
        PileRow("monkeyA", "s02", "0", "sim_primate_a", 31, bins(), seed),
    ]
    train1 = [
        PileRow("P1", "s01", "0", "sim_human_b", 17, bins(), seed),
        PileRow("monkeyA", "s01", "0", "sim_human_b", 9, bins(), seed),  # same ids, other dataset: no collision
        PileRow("P2", "s07", "3", "sim_human_b", 40, bins(), seed),
    ]
    test = [
        PileRow("monkeyA", "s03", "0", "sim_primate_a", 20, bins(), seed),
        PileRow("P1", "s02", "0", "sim_human_b", 12, bins(), seed),
    ]
    return {
        "data/train-00000-of-00002.parquet": train0,
        "data/train-00001-of-00002.parquet": train1,
        "data/test-00000-of-00001.parquet": test,
    }


def write_demo_shards(root: str, seed: int = 0, long_bins: int = 6_000, settings=None) -> dict[str, list]:
    """Write :func:`demo_rows` under ``root``; returns shard name → [(row, counts)] for checks."""
    out = {}
    for name, rows in demo_rows(seed, long_bins).items():
        pairs = [(r, simulate_counts(r)) for r in rows]
        write_shard(f"{root.rstrip('/')}/{name}", pairs, settings=settings)
        out[name] = pairs
    return out
