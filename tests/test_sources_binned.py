"""The ``binned`` reader: count matrices with behaviour from MATLAB v5/v7.3, NPY, NPZ and HDF5 files, any URI.

Files are written by the libraries users write them with (scipy.io for MATLAB v5, MATLAB's v7.3 layout through
h5py, NumPy, h5py), and the real Stevenson et al. files are read as published. Windows must hold exactly the
summed native bins, whatever the container; bad arrays fail their item with the file, the array and the problem.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import polars as pl
import pytest
import scipy.io as sio
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st
from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.item import process_item
from neurobridge.sources import discover, open_source
from neurobridge.sources.binned import rebin, rebin_factor
from neurobridge.sources.io import matv73
from neurobridge.storage import filesystem

STEVENSON = SHARED_DATA / "stevenson_2011"
N_UNITS, N_BINS = 7, 203


def recording(seed: int = 0) -> dict[str, np.ndarray]:
    """A small session as the arrays a binned file holds: counts [units x bins], time, 2-D velocity [2 x bins]."""
    g = np.random.default_rng(seed)
    return {
        "spikes": g.poisson(1.5, (N_UNITS, N_BINS)).astype(np.uint8),
        "time": (5.0 + 0.01 * np.arange(N_BINS))[None, :],
        "handVel": g.normal(size=(2, N_BINS)),
    }


def write(path, arrays: dict[str, np.ndarray]) -> str:
    """``arrays`` (MATLAB order) in the container the suffix names, as its usual writer lays it out."""
    suffix = path.suffix
    if suffix == ".mat" and path.stem.endswith("v73"):
        with matv73.create(path) as f:
            for name, value in arrays.items():
                matv73.write_matlab(f, name, value, "double")
        matv73.stamp(path)
    elif suffix == ".mat":
        sio.savemat(path, arrays)
    elif suffix == ".npz":
        np.savez(path, **arrays)
    elif suffix == ".h5":
        with h5py.File(path, "w") as f:
            for name, value in arrays.items():
                f.create_dataset(f"data/{name}", data=value)
    return str(path)


def entry(uri: str, ingest_ms: float = 20.0, **binned) -> CatalogEntry:
    opts = {
        "counts": "spikes",
        "bin_ms": 10,
        "time": "time",
        "region": "M1",
        "behavior": [{"array": "handVel", "names": ["x", "y"], "axes": "channels_bins"}],
    }
    return CatalogEntry.of(
        name="b",
        kind="binned",
        uri=uri,
        subject="m",
        ingest={"bin_ms": ingest_ms, "window": {"mode": "chunks", "chunk_s": 0.3}},
        binned=opts | binned,
    )


def blocks_of(e: CatalogEntry, settings_=None):
    from neurobridge.config import get_settings

    s = settings_ or get_settings()
    items = discover(e, s)
    assert len(items) == 1
    with open_source(e, items[0], s) as src:
        return list(src.blocks(e.ingest)), src.stats()


@pytest.mark.parametrize("name", ["rec.mat", "rec_v73.mat", "rec.npz", "rec.h5"])
def test_every_container_yields_the_exactly_summed_native_bins_and_averaged_behaviour(tmp_path, name):
    arrays = recording()
    prefix = "data/" if name.endswith(".h5") else ""
    e = entry(
        write(tmp_path / name, arrays),
        counts=f"{prefix}spikes",
        time=f"{prefix}time",
        behavior=[{"array": f"{prefix}handVel", "names": ["x", "y"], "axes": "channels_bins"}],
    )
    blocks, stats = blocks_of(e)
    values = np.concatenate([b.values for b in blocks])
    behavior = np.concatenate([b.behavior for b in blocks])
    n_win = N_BINS // 30  # 0.3 s windows of 20 ms bins, each 2 native 10 ms bins: 30 native bins per window
    assert values.shape == (n_win, N_UNITS, 15) and stats["binned_tail_bins_dropped"] == N_BINS - 30 * n_win
    native = arrays["spikes"][:, : 30 * n_win].astype(np.int64).reshape(N_UNITS, n_win, 15, 2)
    assert np.array_equal(values, native.sum(-1).transpose(1, 0, 2))  # every count, exactly
    vel = arrays["handVel"][:, : 30 * n_win].reshape(2, n_win, 15, 2).mean(-1).transpose(1, 2, 0)
    np.testing.assert_allclose(behavior, vel, rtol=1e-6)
    assert blocks[0].behavior_names == [f"{prefix}handVel.x", f"{prefix}handVel.y"]
    t0 = np.concatenate([b.t_start for b in blocks])
    np.testing.assert_allclose(t0, 5.0 + 0.3 * np.arange(n_win))  # window starts on the file's clock
    assert set(blocks[0].unit_regions) == {"M1"} and blocks[0].split is None


def test_a_bins_by_units_npy_file_streams_in_bounded_blocks_from_an_fsspec_uri(tmp_path):
    counts = recording()["spikes"].T.copy()  # [bins x units], as the S1 file stores it
    fs, _ = filesystem("memory://binned/s1.npy")
    with fs.open("/binned/s1.npy", "wb") as f:
        np.save(f, counts)
    e = entry("memory://binned", axes="bins_units", counts="s1", time=None, behavior=[], block_cells=1000)
    blocks, _ = blocks_of(e)
    assert len(blocks) > 1 and all(b.values.size <= 1000 for b in blocks)  # one window is 105 cells here
    values = np.concatenate([b.values for b in blocks])
    want = counts[: 30 * len(values)].T.astype(np.int64).reshape(N_UNITS, len(values), 15, 2).sum(-1)
    assert np.array_equal(values, want.transpose(1, 0, 2))


def test_trial_tables_give_one_window_per_trial_with_the_official_split(tmp_path):
    arrays = recording() | {
        "trial_start": np.array([[0, 40, 95, 190]]),  # the last trial runs past the recording: dropped, counted
        "trial_split": np.array(["train", "train", "test", "test"], dtype=object),
    }
    e = entry(write(tmp_path / "rec.mat", arrays), trials={"start": "trial_start", "split": "trial_split"})
    e.ingest.window.post_s = 0.2
    blocks, stats = blocks_of(e)
    values = np.concatenate([b.values for b in blocks])
    assert values.shape == (3, N_UNITS, 10) and stats["binned_trials_outside"] == 1
    assert list(np.concatenate([b.split for b in blocks])) == ["train", "train", "test"]
    got = arrays["spikes"][:, 40:60].astype(np.int64).reshape(N_UNITS, 10, 2).sum(-1)
    assert np.array_equal(values[1], got)


def test_chunks_of_one_block_share_a_split_key(tmp_path):
    e = entry(write(tmp_path / "rec.mat", recording()), split_block_s=0.6)
    keys = np.concatenate([b.split_key for b in blocks_of(e)[0]])
    assert list(keys) == ["rec/block0", "rec/block0", "rec/block1", "rec/block1", "rec/block2", "rec/block2"]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(0, 60),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
)
def test_rebinning_sums_native_bins_exactly_and_merges_compose(units, bins, k1, k2, seed):
    x = np.random.default_rng(seed).integers(0, 300, (units, bins))
    once = rebin(x, k1)
    n = bins // k1
    assert once.shape == (units, n) and once.dtype == np.int64
    assert np.array_equal(once.sum(-1), x[:, : n * k1].sum(-1))  # nothing lost but the tail
    assert np.array_equal(rebin(once, k2), rebin(x, k1 * k2))  # two merges = one merge by the product


def test_a_width_that_is_not_a_whole_multiple_is_refused_naming_both():
    assert rebin_factor(50, 150, "f") == 3 and rebin_factor(50, 50, "f") == 1
    for want in (20, 70, 125):
        with pytest.raises(ValueError, match=rf"ingest.bin_ms {want} is not a whole multiple of .* 50 ms"):
            rebin_factor(50, want, "f: array 'spikes'")


BAD = {
    "negative": (lambda a: a | {"spikes": a["spikes"].astype(np.int16) - 3}, {}, "array 'spikes'.*negative count"),
    "nan": (
        lambda a: a | {"spikes": np.where(np.arange(N_BINS) == 17, np.nan, a["spikes"].astype(float))},
        {},
        "array 'spikes'.*NaN or infinite count nan at unit 0, bin 17",
    ),
    "fraction": (
        lambda a: a | {"spikes": a["spikes"] + 0.5},
        {},
        "array 'spikes'.*non-integer count [0-9]+.5 at unit 0, bin 0",
    ),
    "short_behaviour": (
        lambda a: a | {"handVel": a["handVel"][:, :-4]},
        {},
        "array 'handVel'.*has 199 bins but counts 'spikes' have 203",
    ),
    "names": (
        lambda a: a,
        {"behavior": [{"array": "handVel", "names": ["x", "y", "z"], "axes": "channels_bins"}]},
        r"array 'handVel'.*has 2 columns but names lists 3 \(x, y, z\)",
    ),
    "width": (lambda a: a, {"bin_ms": 15}, "array 'spikes'.*ingest.bin_ms 20 is not a whole multiple of .* 15 ms"),
    "missing": (lambda a: a, {"counts": "rates"}, "no array 'rates'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arrays_fail_their_item_naming_file_array_and_problem(tmp_path, settings, case):
    change, options, message = BAD[case]
    path = write(tmp_path / f"{case}.mat", change(recording()))
    e = entry(path, **options)
    (item,) = discover(e, settings)
    rec = process_item(e, item, str(tmp_path / "v"), settings)
    assert rec.status == "failed" and rec.rows == 0
    assert path in rec.error
    assert re.search(message, rec.error), rec.error


@pytest.mark.skipif(not (STEVENSON / "m1_stevenson_2011.mat").exists(), reason="shared real-data excerpts not present")
def test_the_published_stevenson_files_read_as_their_readme_describes(settings):
    from neurobridge.catalog import resolve

    entries = {e.name: e for e in resolve("excerpts")}
    m1 = sio.loadmat(STEVENSON / "m1_stevenson_2011.mat")
    blocks, stats = blocks_of(entries["stevenson_m1_local"], settings)
    values = np.concatenate([b.values for b in blocks])
    assert values.shape == (776, 171, 20) and stats["binned_tail_bins_dropped"] == 16  # 15,536 bins of 50 ms
    assert values.sum() == m1["spikes"][:, : 776 * 20].astype(np.int64).sum()
    vel = np.concatenate([b.behavior for b in blocks])
    np.testing.assert_allclose(vel[3, :, 0], m1["handVel"][0, 60:80], rtol=1e-6)
    s1 = sio.loadmat(STEVENSON / "s1_data.mat")
    blocks, _ = blocks_of(entries["stevenson_s1_local"], settings)
    values = np.concatenate([b.values for b in blocks])
    assert values.shape == (1756, 52, 20)  # [bins x units] in the file: the entry's axes say so
    assert np.array_equal(values[10], s1["spikes"][200:220].T)
    assert blocks[0].behavior_names == ["vel.x", "vel.y"]


def test_an_item_writes_a_units_table_matching_its_rows_so_each_unit_gets_its_own_model_rows(tmp_path, settings):
    e = entry(write(tmp_path / "rec.mat", recording()))
    (item,) = discover(e, settings)
    rec = process_item(e, item, str(tmp_path / "v"), settings)
    assert rec.status == "ok", rec.error
    units = pl.read_parquet(str(tmp_path / "v" / "units" / "*.parquet"))
    rows = pl.read_parquet(str(tmp_path / "v" / "part-*.parquet"))
    assert units["unit_id"].to_list() == rows["unit_ids"][0].to_list()  # grid order, namespaced as in the rows
    assert units["index"].to_list() == list(range(N_UNITS))
    assert sorted(units["raw_id"].cast(int).to_list()) == list(range(N_UNITS))
    assert set(units["region"]) == {"M1"} and units["heldout"].null_count() == N_UNITS


@pytest.mark.skipif(not (STEVENSON / "m1_stevenson_2011.mat").exists(), reason="shared real-data excerpts not present")
def test_the_real_excerpts_ingest_through_the_pipeline(ray_cluster, settings):
    from neurobridge.catalog import resolve
    from neurobridge.ingest.pipeline import ingest_many

    names = ("stevenson_m1_local", "stevenson_s1_local", "nlb_mc_maze_test_local")
    reports = ingest_many([e for e in resolve("excerpts") if e.name in names], settings, progress=False)
    assert all(not isinstance(r, Exception) and r.ok for r in reports), reports
    counts = {r.dataset: r.card.counts for r in reports}
    assert (counts["stevenson_m1_local"].rows, counts["stevenson_m1_local"].units) == (776, 171)
    assert (counts["stevenson_s1_local"].rows, counts["stevenson_s1_local"].units) == (1756, 52)
    assert (counts["nlb_mc_maze_test_local"].rows, counts["nlb_mc_maze_test_local"].spikes) == (574, 230_348)
    m1 = next(r for r in reports if r.dataset == "stevenson_m1_local")
    rows = pl.read_parquet(f"{m1.path}/part-*.parquet")
    block = ((rows["t_start"] - rows["t_start"].min()) / 30.0 + 1e-6).floor()
    per_block = rows.with_columns(block=block).group_by("block").agg(pl.col("split").n_unique())
    assert per_block["split"].max() == 1  # no 30 s block straddles two splits
    assert set(rows["split"]) == {"train", "val", "test"}
    assert rows["behavior_names"][0].to_list() == ["handVel.x", "handVel.y", "handVel.z"]
    from neurobridge.store.read import sources
    from neurobridge.train.pretrain import vocabularies

    vocab = vocabularies(sources(settings, ["stevenson_m1_local", "stevenson_s1_local"]), settings=settings)
    assert len(vocab.unit.to_list()) == 171 + 52  # every binned unit has its own read-in/read-out rows
