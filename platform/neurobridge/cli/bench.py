"""`neurobridge bench …`: benchmarks, each against a reference measured in the same run (registered by app.py)."""

from __future__ import annotations

import typer

from neurobridge.cli import train as cli_train
from neurobridge.cli.output import console, fail

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks with same-run references.")


@bench_app.command("ingest")
def bench_ingest(
    units: int = typer.Option(500, help="units in the benchmark session (Neuropixels sessions hold 300-1000)"),
    minutes: float = typer.Option(10.0, help="session length (≥ 5M spikes at the defaults)"),
    growth: int = typer.Option(8, help="second session this many times longer, for the RSS check (1: skip)"),
    workdir: str = typer.Option(None, help="where benchmark sessions are cached"),
    repeats: int = typer.Option(3, help="timed runs per measurement (the median is reported)"),
    source: str = typer.Option("nwb", help="nwb (spike binning), pile (Neural Pile shards) or tvsd (MUA float path)"),
    channels: int = typer.Option(256, help="tvsd: channels per monkey"),
    trials: int = typer.Option(1000, help="tvsd: trials in the smaller dataset"),
    workers: str = typer.Option(
        None, help="scaling instead: ingest throughput with these many Ray workers at once, e.g. 1,2 (ratios vs 1)"
    ),
    items: int = typer.Option(8, help="--workers: sessions ingested per setting"),
):
    """Ingest throughput and peak RSS against a plain-read reference in the same run, per source kind."""
    if workers:
        from neurobridge.bench.scale import bench_scaling

        try:
            counts = [int(w) for w in workers.split(",")]
        except ValueError:
            fail(f"--workers takes comma-separated counts, e.g. 1,2 (got {workers!r})")
        bench_scaling(
            counts, items=items, n_units=units, minutes=minutes, repeats=repeats, workdir=workdir, echo=console.print
        )
        return
    if source == "tvsd":
        from neurobridge.bench.tvsd import bench_tvsd

        tvsd_growth = growth if growth != 8 else 4  # the spike default (8x) would write ~3.5 GB of MUA
        bench_tvsd(
            channels=channels,
            trials=trials,
            growth=tvsd_growth,
            workdir=workdir,
            repeats=min(repeats, 2),
            echo=console.print,
        )
        return
    if source == "pile":
        from neurobridge.bench.pile import PileBenchSizes, bench_pile

        bench_pile(PileBenchSizes(growth=max(growth // 2, 2)), workdir=workdir, echo=console.print)
        return
    if source != "nwb":
        fail(f"unknown --source {source!r}: nwb, pile or tvsd")
    from neurobridge.bench.ingest import bench_ingest as run

    run(n_units=units, minutes=minutes, growth=growth, workdir=workdir, repeats=repeats, echo=console.print)


@bench_app.command("embed-images")
def bench_embed_images_cmd(
    images: int = typer.Option(256, help="images in the smaller run"),
    growth: int = typer.Option(4, help="second run with this many times more images, for the memory check (1: skip)"),
    arch: str = typer.Option("b32", help="b32 (ViT-B/32-shaped, random weights) or tiny"),
    batch_size: int = typer.Option(32, help="images per model call"),
    cpus: int = typer.Option(None, help="logical CPUs for the job's local Ray (default: all)"),
    workdir: str = typer.Option(None, help="where images and the model are cached"),
):
    """embed-images throughput against a plain loop in the same run, and the job's peak memory at N vs growth×N."""
    from neurobridge.bench.images import ARCHS, bench_embed_images

    if arch not in ARCHS:
        fail(f"unknown --arch {arch!r}: {', '.join(ARCHS)}")
    bench_embed_images(
        n_images=images, growth=growth, arch=arch, batch_size=batch_size, workdir=workdir, cpus=cpus, echo=console.print
    )


@bench_app.command("align")
def bench_align_cmd(
    images: int = typer.Option(500, help="simulated images"),
    repeats: int = typer.Option(5, help="presentations per image"),
    test: int = typer.Option(100, help="test stimuli (candidates for retrieval)"),
    epochs: int = typer.Option(60, help="projector training epochs per region set"),
    pretrain_steps: int = typer.Option(
        0, help="also pretrain a small encoder this many steps: pretrained vs untrained"
    ),
    workdir: str = typer.Option(None, help="where the simulated sessions and images are cached"),
    ray_train: bool = typer.Option(False, "--ray-train", help="also fit 'all' on Ray Train: tokens/s vs the plain fit"),
):
    """Alignment on simulated V1/V4/IT: retrieval per region set (chance, ridge baseline beside it), tokens/s."""
    from neurobridge.bench.align import AlignBenchConfig, bench_align

    bench = AlignBenchConfig(
        n_images=images, repeats=repeats, n_test=test, epochs=epochs, pretrain_steps=pretrain_steps, ray_train=ray_train
    )
    bench_align(bench, workdir=workdir, echo=console.print)


@bench_app.command("fmri")
def bench_fmri_cmd(
    voxels: int = typer.Option(200_000, help="voxels of the simulated subject (THINGS sub-01: 211,339)"),
    trials: int = typer.Option(2000, help="trials of the smaller table"),
    growth: int = typer.Option(2, help="second table with this many times more trials, for the RSS check (1: skip)"),
    all_voxels: bool = typer.Option(True, "--all-voxels/--roi-only", help="also ingest every voxel (GBs of rows)"),
    workdir: str = typer.Option(None, help="where the simulated tables are cached"),
):
    """THINGS-fMRI table ingest: MB/s against a plain h5py read in the same run, peak RSS at N and growth×N trials."""
    from neurobridge.bench.fmri import bench_fmri

    bench_fmri(voxels, trials, growth, workdir, all_voxels, echo=console.print)


bench_app.command("train")(cli_train.bench_train)
bench_app.command("model")(cli_train.bench_model)
