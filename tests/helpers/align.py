"""Simulated visual sessions for the alignment tests (V1/V4/IT, images with known embeddings) and the alignment
configs over them."""

from __future__ import annotations

import numpy as np
from neurobridge.align.config import AlignConfig, AlignDataConfig
from neurobridge.catalog import CatalogEntry
from neurobridge.sim import VISUAL_WINDOW, SimConfig, simulate

REGIONS = ["V1", "V4", "IT"]


WINDOWS = {"V1": [40, 190], "V4": [60, 210], "IT": [80, 230]}  # the simulator's latencies + response_ms


FAST = {"epochs": 40, "patience": 10}


def visual_entry(name: str, root, salt: str = "neurobridge") -> CatalogEntry:
    """One row per image presentation (20 ms bins over 250 ms), stimulus ids ``sim_ns/frame_NNN``."""
    return CatalogEntry.of(
        name=name,
        kind="nwb",
        uri=str(root / "visual"),
        ingest={
            "bin_ms": 20,
            "split": {"salt": salt},
            "window": VISUAL_WINDOW,
        },
    )


def simulate_visual(root, n_images: int, repeats: int, gain: tuple[float, float]) -> None:
    """One visual session, V1/V4/IT at 40/60/80 ms latency, image gain from ``gain[0]`` to ``gain[1]``."""
    cfg = SimConfig(
        nwb_subjects=0,
        alf_subjects=0,
        visual_sessions=1,
        n_images=n_images,
        image_repeats=repeats,
        visual_regions=REGIONS,
        visual_latency_ms=[40.0, 60.0, 80.0],
        visual_gain=gain,
        write_truth=False,
        write_images=False,
    )
    simulate(str(root), cfg, progress=False)


def data_cfg(dataset: str, sim_root, **kw) -> AlignDataConfig:
    """Alignment data over a dataset of conftest.align_store, with the simulator's embeddings and a hash split."""
    ids = [f"frame_{i:03d}" for i in range(len(np.load(sim_root / "visual/images/embeddings.npy")))]
    base = {
        "datasets": [dataset],
        "windows": WINDOWS,
        "embeddings": {"npy": str(sim_root / "visual/images/embeddings.npy"), "ids": ids, "id_prefix": "sim_ns"},
        "split": {"rule": "hash", "n_test": 100, "n_val": 50},
    }
    return AlignDataConfig.model_validate({**base, **kw})


# the single session of conftest.visual (encoder training, Ray Train, the align command)
N_IMAGES, REPEATS, N_TEST, N_VAL = 200, 3, 40, 20


def config(visual, **kw) -> AlignConfig:
    """An alignment config over conftest.visual's session (``N_TEST`` test and ``N_VAL`` validation images)."""
    ids = [f"frame_{i:03d}" for i in range(N_IMAGES)]
    data = {
        "datasets": ["vis"],
        "windows": WINDOWS,
        "embeddings": {"npy": str(visual["sim"] / "visual/images/embeddings.npy"), "ids": ids, "id_prefix": "sim_ns"},
        "split": {"rule": "hash", "n_test": N_TEST, "n_val": N_VAL},
        **kw.pop("data", {}),
    }
    return AlignConfig.model_validate({"data": data, "subset_candidates": [20], "subset_draws": 20, **kw})
