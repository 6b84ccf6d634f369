"""`neurobridge decode | simulate-fmri` (registered by app.py): semantic decoding of stimulus-locked datasets, and
the THINGS-fMRI look-alike (both layouts, ratings, truth, MUA of the same images) it is checked on."""

from __future__ import annotations

from pathlib import Path

import typer

from neurobridge.cli.output import console, fail
from neurobridge.config import get_settings, parse_overrides


def decode(
    config: Path = typer.Option(..., "--config", "-c", help="YAML decode config (jobs/configs/decode_fmri_demo.yaml)"),
    overrides: list[str] = typer.Option(None, "--set", help="override a config key, e.g. --set net.epochs=20"),
    figure: Path = typer.Option(None, "--figure", help="also write the run's figure (PNG) here"),
):
    """Concepts (top-k beside chance), property ratings (R² and r beside their reliability) and image retrieval,
    decoded per region set by ridge/logistic, MLP, the masked encoder and 3-D CNN/ViT; Ray Train + MLflow."""
    from neurobridge.align.examples import AlignDataError
    from neurobridge.config import ConfigError
    from neurobridge.decode.config import load_decode_config
    from neurobridge.decode.experiment import run_decode
    from neurobridge.storage import StoreError
    from neurobridge.tracking.mlflow_run import TrackingError

    try:
        cfg = load_decode_config(config, parse_overrides(overrides))
        result = run_decode(cfg, get_settings(), echo=console.print)
    except (ConfigError, AlignDataError, StoreError, TrackingError, ValueError) as err:
        fail(str(err))
    if figure is not None and result.figure is not None:
        figure.parent.mkdir(parents=True, exist_ok=True)
        result.figure.savefig(figure, dpi=110)
        console.print(f"figure → {figure}")
    if result.run_id:
        console.print(f"MLflow run [bold]{result.run_id}[/] (experiment {cfg.experiment})")


def simulate_fmri(
    out: str = typer.Option(None, help="output folder (default: <NB_RAW>/sim_things; local)"),
    seed: int = typer.Option(0, help="simulator seed (the same seed writes the same responses)"),
    subjects: int = typer.Option(1, help="simulated subjects (sub-01, …)"),
    concepts: int = typer.Option(720, help="concepts (THINGS-fMRI: 720)"),
    train_images: int = typer.Option(8, help="training images per concept (THINGS-fMRI: 12)"),
    test_concepts: int = typer.Option(100, help="concepts with a test image (THINGS-fMRI: 100)"),
    sessions: int = typer.Option(6, help="sessions; each test image is shown once per session"),
    volumes: bool = typer.Option(True, "--volumes/--no-volumes", help="also write the volume layout (NIfTI)"),
    mua: bool = typer.Option(True, "--mua/--no-mua", help="also write TVSD-style MUA of the same images"),
):
    """Write THINGS-fMRI look-alikes (table + volume layouts of the same betas), THINGSplus-style ratings and
    concepts, the truth (ceilings, oracle R²) and MUA of the same images; catalog/things_fmri.yaml names them."""
    from neurobridge.sim.fmri import FmriSimConfig
    from neurobridge.sim.fmri_writers import simulate_fmri as run
    from neurobridge.sim.things import ThingsSimConfig

    target = Path(out or f"{get_settings().raw_root}/sim_things")
    if "://" in str(target):
        fail("simulate-fmri writes to a local folder (NIfTI and PyTables need local files)")
    things = ThingsSimConfig(seed=seed, concepts=concepts, train_images=train_images, test_concepts=test_concepts)
    try:
        cfg = FmriSimConfig(seed=seed, subjects=subjects, sessions=sessions, things=things, volumes=volumes)
        summary = run(target, cfg, mua=mua)
    except ValueError as err:
        fail(str(err))
    for s in summary["subjects"]:
        best = {r: max(v, key=v.get) for r, v in (s["oracle_r2"] or {}).items()}
        console.print(
            f"{s['subject']}: {s['voxels']:,} voxels × {s['trials']:,} trials; ROIs "
            + ", ".join(f"{r} (nc {v['mean_nc_testset']:.0f} %)" for r, v in s["rois"].items())
        )
        for roi, prop in best.items():
            console.print(f"  oracle R² {roi}: best property {prop} {s['oracle_r2'][roi][prop]:.3f}")
    console.print(f"wrote {summary['images']:,} images' data to [bold]{target}[/]")
