"""The ground-truth simulator: real raw formats read back with the real libraries, truth consistent with spikes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from neurobridge.sim import SimConfig, simulate, simulate_session_file
from pydantic import ValidationError

SMALL = dict(
    nwb_subjects=2,
    nwb_sessions_per_subject=1,
    alf_subjects=1,
    alf_sessions_per_subject=2,
    visual_sessions=1,
    units_min=30,
    units_max=50,
    minutes=1.0,
    n_images=8,
    image_repeats=6,
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    index = simulate(str(out), SimConfig(**SMALL), progress=False)
    return out, index


def _sessions(index, fmt):
    return [s for s in index["sessions"] if s["format"] == fmt]


def _nwb_spikes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["units/spike_times"][:], f["units/spike_times_index"][:]


def _alf_spikes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(folder / "spikes.times.npy"), np.load(folder / "spikes.clusters.npy")


def _one(cache_dir):
    from one.api import ONE

    return ONE(mode="local", cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------------------------


def test_index_lists_every_session_with_distinct_recordings(sim):
    out, index = sim
    assert json.loads((out / "simulation.json").read_text()) == index
    assert [s["format"] for s in index["sessions"]] == ["nwb", "nwb", "alf", "alf", "visual"]
    ids = [s["session_id"] for s in index["sessions"]]
    assert len(set(ids)) == len(ids)
    assert {s["subject"] for s in _sessions(index, "nwb")} == {"monkey00", "monkey01"}
    for s in index["sessions"]:
        assert (out / s["path"]).exists()
        assert SMALL["units_min"] <= s["n_units"] <= SMALL["units_max"]
        assert s["n_spikes"] > 1000 and s["duration_s"] >= 60.0
        assert s["species"] == ("Macaca mulatta" if s["format"] == "nwb" else "Mus musculus")
    # sessions differ: their own loadings, so their true rates are not copies of each other
    a, b = (np.load(out / s["truth"] / "rates.npy") for s in _sessions(index, "alf"))
    assert a.shape != b.shape or not np.allclose(a, b)


def test_same_seed_gives_identical_spikes_and_another_seed_different(tmp_path):
    cfg = dict(SMALL, nwb_subjects=1, alf_sessions_per_subject=1, minutes=0.3, write_images=False)
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        simulate(str(tmp_path / name), SimConfig(seed=seed, **cfg), progress=(name == "a"))
        nwb = _nwb_spikes(tmp_path / name / "nwb" / "sub-monkey00_ses-s00.nwb")
        alf = _alf_spikes(tmp_path / name / "alf/simlab/Subjects/mouse00/2024-01-01/001/alf/probe00")
        vis = _nwb_spikes(tmp_path / name / "visual" / "sub-vismouse00_ses-s00.nwb")
        runs[name] = [*nwb, *alf, *vis]
    for x, y in zip(runs["a"], runs["b"], strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert not np.array_equal(runs["a"][0], runs["c"][0]) and not np.array_equal(runs["a"][2], runs["c"][2])
    index_a = json.loads((tmp_path / "a" / "simulation.json").read_text())
    index_b = json.loads((tmp_path / "b" / "simulation.json").read_text())
    assert index_a["sessions"] == index_b["sessions"]  # same ONE eids too


def test_nwb_reads_back_with_pynwb(sim):
    from pynwb import NWBHDF5IO

    out, index = sim
    for s in _sessions(index, "nwb"):
        with NWBHDF5IO(str(out / s["path"]), "r") as io:
            nwb = io.read()
            assert nwb.session_id == s["session_id"]
            assert nwb.subject.subject_id == s["subject"] and nwb.subject.species == "Macaca mulatta"
            units = nwb.units
            assert len(units) == s["n_units"]
            total = 0
            for i in range(len(units)):
                t = np.asarray(units["spike_times"][i])
                total += len(t)
                assert np.all(np.diff(t) >= 0) and (len(t) == 0 or (t[0] >= 0 and t[-1] < s["duration_s"]))
                locations = units["electrodes"][i]["location"].tolist()
                assert len(locations) == 1 and locations[0] in s["regions"]
            assert total == s["n_spikes"]
            held = np.asarray(units["heldout"].data[:], dtype=bool)
            assert 0.15 < held.mean() < 0.35
            truth = json.loads((out / s["truth"] / "units.json").read_text())
            assert truth["unit_ids"] == [int(u) for u in units.id[:]]
            assert truth["regions"] == [units["electrodes"][i]["location"].iloc[0] for i in range(len(units))]
            trials = nwb.trials.to_dataframe()
            assert len(trials) == s["n_trials"] > 50
            length = trials.stop_time - trials.start_time
            assert length.between(0.6, 0.8).all() and (trials.start_time.diff().dropna() > 0.7).all()
            assert ((trials.move_onset_time > trials.start_time) & (trials.move_onset_time < trials.stop_time)).all()
            split = trials.split.value_counts(normalize=True)
            assert set(split.index) == {"train", "val", "test"} and 0.7 < split["train"] < 0.9


def test_visual_sessions_have_presentations_images_and_embeddings(sim):
    from PIL import Image
    from pynwb import NWBHDF5IO

    out, index = sim
    (s,) = _sessions(index, "visual")
    with NWBHDF5IO(str(out / s["path"]), "r") as io:
        nwb = io.read()
        assert nwb.trials is None and nwb.subject.species == "Mus musculus"
        table = nwb.intervals["natural_scenes_presentations"].to_dataframe()
        locations = {nwb.units["electrodes"][i]["location"].iloc[0] for i in range(len(nwb.units))}
    assert locations == {"VISp", "VISl", "VISal", "VISam"}
    assert len(table) == s["n_presentations"] == SMALL["n_images"] * SMALL["image_repeats"]
    assert np.bincount(table.frame, minlength=SMALL["n_images"]).tolist() == [SMALL["image_repeats"]] * 8
    assert np.allclose(table.stop_time - table.start_time, 0.25)
    emb = np.load(out / "visual/images/embeddings.npy")
    assert emb.shape == (8, 16) and emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    pixels = [np.asarray(Image.open(out / f"visual/images/frame_{i:03d}.png")) for i in range(8)]
    assert pixels[0].shape == (32, 32, 3) and not np.array_equal(pixels[0], pixels[1])
    assert index["images"]["embeddings"] == "visual/images/embeddings.npy"


def test_visual_responses_carry_the_image_identity_most_in_the_last_region(sim):
    out, index = sim
    (s,) = _sessions(index, "visual")
    times, ends = _nwb_spikes(out / s["path"])
    starts = np.concatenate([[0], ends[:-1]])
    regions = np.array(json.loads((out / s["truth"] / "units.json").read_text())["regions"])
    with h5py.File(out / s["path"], "r") as f:
        onset = f["intervals/natural_scenes_presentations/start_time"][:]
        frame = f["intervals/natural_scenes_presentations/frame"][:]
    same = (frame[:, None] == frame[None, :]) & ~np.eye(len(frame), dtype=bool)
    gap = {}
    for region, latency in (("VISp", 0.04), ("VISam", 0.10)):
        units = np.flatnonzero(regions == region)
        counts = np.array(
            [
                np.searchsorted(times[starts[u] : ends[u]], onset + latency + 0.15)
                - np.searchsorted(times[starts[u] : ends[u]], onset + latency)
                for u in units
            ]
        ).T  # [presentations, units]
        z = (counts - counts.mean(0)) / (counts.std(0) + 1e-9)
        corr = np.corrcoef(z)
        gap[region] = corr[same].mean() - corr[~same & ~np.eye(len(frame), dtype=bool)].mean()
    assert gap["VISam"] > 0.2
    assert gap["VISam"] > gap["VISp"] > 0


def test_alf_sessions_load_through_one_local_mode(sim):
    out, index = sim
    one = _one(out / "alf")
    sessions = _sessions(index, "alf")
    eids = {str(e) for e in one.search()}
    assert eids == {s["eid"] for s in sessions}
    assert [str(e) for e in one.search(subject="mouse00", date="2024-01-02")] == [sessions[1]["eid"]]
    for s in sessions:
        folder = out / s["path"]
        datasets = set(one.list_datasets(s["eid"]))
        for name in ("spikes.times", "spikes.clusters", "clusters.brainLocationAcronyms_ccf_2017", "clusters.label"):
            assert f"alf/probe00/{name}.npy" in datasets
        for name in ("stimOn_times", "intervals", "choice", "feedbackType"):
            assert f"alf/trials.{name}.npy" in datasets
        assert Path(one.eid2path(s["eid"])) == folder.parents[1]
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no ALFWarning (e.g. missing default revision)
            path = one.load_dataset(s["eid"], "spikes.times.npy", collection="alf/probe00", download_only=True)
            loaded = one.load_dataset(s["eid"], "spikes.times.npy", collection="alf/probe00")
        assert Path(path) == folder / "spikes.times.npy"
        times, clusters = _alf_spikes(folder)
        assert np.array_equal(loaded, times) and times.dtype == np.float64 and clusters.dtype == np.int64
        assert len(times) == s["n_spikes"] and np.all(np.diff(times) >= 0)
        assert clusters.min() >= 0 and clusters.max() < s["n_units"]
        acronyms = np.load(folder / "clusters.brainLocationAcronyms_ccf_2017.npy", allow_pickle=False)
        assert acronyms.dtype.kind == "U" and len(acronyms) == s["n_units"] and set(acronyms) <= set(s["regions"])
        label = np.load(folder / "clusters.label.npy")
        assert set(np.round(label, 2)) <= {0.33, 0.67, 1.0} and 0.5 < (label == 1.0).mean() < 0.9
        assert len(np.load(folder / "clusters.depths.npy")) == s["n_units"]
        trials = one.load_object(s["eid"], "trials", collection="alf")
        n = len(trials["stimOn_times"])
        assert n == s["n_trials"] and trials["intervals"].shape == (n, 2)
        assert np.all(np.diff(trials["stimOn_times"]) > 2.0)  # stimOn −0.5…+1.5 s windows never overlap
        assert set(trials["choice"]) <= {-1, 1} and set(trials["feedbackType"]) <= {-1, 1}
        truth = json.loads((out / s["truth"] / "units.json").read_text())
        assert truth["unit_ids"] == list(range(s["n_units"])) and truth["regions"] == acronyms.tolist()


def test_truth_rates_explain_the_spike_counts(sim):
    out, index = sim
    for s in index["sessions"]:
        rates = np.load(out / s["truth"] / "rates.npy")
        info = json.loads((out / s["truth"] / "units.json").read_text())
        assert info["format"] == s["format"] and info["path"] == s["path"] and info["bin_ms"] == 10.0
        assert rates.dtype == np.float32 and rates.shape == (s["n_units"], round(s["duration_s"] * 100))
        assert rates.min() >= 0 and rates.max() <= 200.0
        expected = rates.astype(np.float64).sum(axis=1) * 0.01
        if s["format"] == "alf":
            observed = np.bincount(_alf_spikes(out / s["path"])[1], minlength=s["n_units"])
        else:
            observed = np.diff(np.concatenate([[0], _nwb_spikes(out / s["path"])[1]]))
        assert abs(observed.sum() / expected.sum() - 1) < 0.03
        assert np.corrcoef(observed, expected)[0, 1] > 0.98


def test_shared_latents_dominate_the_true_rates(sim):
    """Within a region, log-rates are baseline + loadings × latents: rank ≤ latent_dim, no private slow noise."""
    out, index = sim
    for s in _sessions(index, "nwb"):
        rates = np.load(out / s["truth"] / "rates.npy").astype(np.float64)
        regions = np.array(json.loads((out / s["truth"] / "units.json").read_text())["regions"])
        for region in s["regions"]:
            log_rates = np.log(rates[regions == region])
            log_rates -= log_rates.mean(axis=1, keepdims=True)
            sv = np.linalg.svd(log_rates, compute_uv=False) ** 2
            assert sv[:4].sum() / sv.sum() > 0.99
            assert log_rates.std() > 0.5  # strong modulation relative to the Poisson noise


def test_session_file_for_benchmarks(tmp_path):
    nwb = simulate_session_file(str(tmp_path / "big.nwb"), "nwb", n_units=30, minutes=0.5, seed=1, write_truth=True)
    times, ends = _nwb_spikes(tmp_path / "big.nwb")
    assert nwb["n_units"] == len(ends) == 30 and nwb["n_spikes"] == len(times) and nwb["uri"].endswith("big.nwb")
    assert np.load(tmp_path / nwb["truth"] / "rates.npy").shape == (30, 3000)
    alf = simulate_session_file(str(tmp_path / "alf"), "alf", n_units=30, minutes=0.5, seed=1)
    one = _one(tmp_path / "alf")
    assert [str(e) for e in one.search()] == [alf["eid"]]
    path = one.load_dataset(alf["eid"], "spikes.times.npy", collection=alf["collection"], download_only=True)
    assert len(np.load(path)) == alf["n_spikes"] and not (tmp_path / "alf" / "truth").exists()


def test_remote_output_is_uploaded_with_the_index_last(tmp_path):
    from neurobridge.storage import filesystem

    cfg = SimConfig(
        nwb_subjects=1,
        nwb_sessions_per_subject=1,
        alf_sessions_per_subject=1,
        visual_sessions=0,
        units_min=10,
        units_max=10,
        minutes=0.2,
    )
    uri = f"memory://nb-sim-test/{tmp_path.name}"
    index = simulate(uri, cfg, progress=False)
    fs, root = filesystem(uri)
    files = {f[len(root) + 1 :] for f in fs.find(root)}
    assert {"simulation.json", "alf/sessions.pqt", "alf/datasets.pqt"} <= files
    assert all(s["path"] in files or any(f.startswith(s["path"]) for f in files) for s in index["sessions"])
    assert json.loads(fs.cat_file(f"{root}/simulation.json")) == index
    fs.rm(root, recursive=True)


def test_config_is_validated():
    with pytest.raises(ValidationError):
        SimConfig(unknown_option=1)
    with pytest.raises(ValidationError):
        SimConfig(units_min=50, units_max=10)
    with pytest.raises(ValidationError):
        SimConfig(visual_regions=["V1", "V2"])  # one latency per region is required
    assert SimConfig(nwb_subjects=0, alf_subjects=0, visual_sessions=0).nwb_subjects == 0
