"""Shared by the fMRI and decoding tests: small simulated THINGS-fMRI subjects and ingest through the real engine
(discover → process_item → commit, the per-item path Ray runs) without a Ray start-up."""

from __future__ import annotations

from pathlib import Path

from neurobridge.catalog import CatalogEntry
from neurobridge.ingest.item import process_item
from neurobridge.ingest.plan import commit, plan_entry
from neurobridge.sim.fmri import FmriSimConfig, RoiSim
from neurobridge.sim.things import ThingsSimConfig

ROIS = ["V1", "hV4", "lFFA", "IT"]  # the shipped sim_fmri entry's ROIs, in its priority order


def small_config(**kw) -> FmriSimConfig:
    """~880 voxels × 240 trials: four ROIs (lFFA also flagged IT), 60 concepts, 20 test images × 3 repeats."""
    rois = [
        RoiSim(name="V1", voxels=30, noise_ceiling=20, centre=(0.5, 0.15, 0.45)),
        RoiSim(name="hV4", voxels=20, noise_ceiling=30, centre=(0.5, 0.35, 0.35)),
        RoiSim(
            name="lFFA",
            voxels=20,
            noise_ceiling=40,
            properties=0.7,
            embedding=0.3,
            focus=["size"],
            centre=(0.3, 0.6, 0.3),
            member_of=["IT"],
        ),
        RoiSim(name="IT", voxels=30, noise_ceiling=50, properties=0.2, embedding=0.8, centre=(0.68, 0.62, 0.3)),
    ]
    base = {
        "grid": (12, 14, 10),
        "sessions": 3,
        "runs_per_session": 2,
        "rois": rois,
        "things": ThingsSimConfig(concepts=60, train_images=3, test_concepts=20),
    }
    return FmriSimConfig(**{**base, **kw})


def fmri_entry(root: Path, name: str = "sim_fmri", **fmri) -> CatalogEntry:
    opts = {"rois": ROIS, **fmri}
    return CatalogEntry.of(
        name=name,
        kind="fmri",
        uri=str(root / "fmri"),
        fmri=opts,
        ingest={"bin_ms": 4500},
        species="Homo sapiens",
        task="sim_things_fmri",
    )


def ingest_local(entry: CatalogEntry, settings):
    """The engine's per-item path for every item, then the commit: a dataset version without Ray."""
    plan = plan_entry(entry, entry.settings_for(settings))
    records = [process_item(entry, item, plan.vdir, plan.settings) for item in plan.todo]
    return commit(plan, records)
