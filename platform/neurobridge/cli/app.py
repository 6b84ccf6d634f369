"""`neurobridge …`: the command line over the library (typer + rich)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from neurobridge.catalog import CatalogError, load_catalog, resolve
from neurobridge.cli import registry as cli_registry
from neurobridge.cli import train as cli_train
from neurobridge.cli import tune as cli_tune
from neurobridge.config import get_settings
from neurobridge.sources import SourceError
from neurobridge.storage import StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="NeuroBridge: neural data → tokens → models.")
catalog_app = typer.Typer(no_args_is_help=True, help="List and validate catalog entries.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks with same-run references.")
app.add_typer(catalog_app, name="catalog")
app.add_typer(bench_app, name="bench")
app.add_typer(cli_registry.registry_app, name="registry")
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@catalog_app.command("list")
def catalog_list(directory: Path = typer.Option(None, "--dir", help="catalog directory (default ./catalog)")):
    try:
        entries = load_catalog(directory)
    except CatalogError as err:
        _fail(str(err))
    table = Table("name", "kind", "species", "task", "uri", "file")
    for e in entries.values():
        table.add_row(e.name, e.kind, e.species, e.task, e.uri, Path(e.source_file).name)
    console.print(table)


@catalog_app.command("validate")
def catalog_validate(
    paths: list[Path] = typer.Argument(None, help="YAML files (default: every catalog file)"),
):
    from neurobridge.catalog import catalog_dir, load_file

    files = paths or sorted(catalog_dir().glob("*.yaml"))
    errors = 0
    for path in files:
        try:
            n = len(load_file(path))
            console.print(f"[green]ok[/] {path} ({n} entr{'y' if n == 1 else 'ies'})")
        except CatalogError as err:
            errors += 1
            err_console.print(f"[red]invalid[/] {err}")
    if errors:
        raise typer.Exit(1)


@app.command()
def simulate(
    out: str = typer.Option(None, help="output root (default: <NB_RAW>/sim; any fsspec URI)"),
    seed: int = typer.Option(0),
    minutes: float = typer.Option(2.0, help="minutes per session"),
    nwb_subjects: int = typer.Option(2),
    alf_subjects: int = typer.Option(1),
    visual_sessions: int = typer.Option(1),
    sessions_per_subject: int = typer.Option(2),
    tvsd: bool = typer.Option(True, "--tvsd/--no-tvsd", help="also write the TVSD-style DataLad dataset (tvsd/)"),
    pile: bool = typer.Option(True, "--pile/--no-pile", help="also write Neural Pile-style shards (pile/data/)"),
):
    """Write ground-truth recordings (NWB, ALF + ONE cache, Allen-style visual NWB, TVSD, Pile shards) and the
    true rates."""
    from neurobridge.sim import SimConfig
    from neurobridge.sim import simulate as run_sim

    settings = get_settings()
    out = out or f"{settings.raw_root}/sim"
    cfg = SimConfig(
        seed=seed,
        minutes=minutes,
        nwb_subjects=nwb_subjects,
        alf_subjects=alf_subjects,
        visual_sessions=visual_sessions,
        nwb_sessions_per_subject=sessions_per_subject,
        alf_sessions_per_subject=sessions_per_subject,
        tvsd=tvsd,
        pile=pile,
    )
    summary = run_sim(out, cfg)
    console.print(f"wrote {len(summary['sessions'])} sessions to [bold]{out}[/]")
    if summary.get("tvsd", {}).get("skipped"):
        console.print(f"[yellow]tvsd not written:[/] {summary['tvsd']['skipped']}")


@app.command()
def ingest(
    refs: list[str] = typer.Argument(..., help="catalog file stems, entry names or YAML paths (e.g. demo)"),
    workers: int = typer.Option(None, help="parallel items (default: Ray's CPUs)"),
    progress: bool = typer.Option(True, help="show Ray Data progress bars"),
    mixture: str = typer.Option(None, help="record the resulting dataset versions as this named mixture"),
    max_retries: int = typer.Option(3, min=0, help="attempts after the worker ingesting an item dies"),
):
    """Ingest catalog entries (all in one Ray run) into versioned Parquet; exits 1 if any item failed."""
    from neurobridge.ingest.pipeline import ingest_many
    from neurobridge.store.mixtures import write_mixture

    settings = get_settings()
    try:
        entries = [e for ref in refs for e in resolve(ref)]
    except CatalogError as err:
        _fail(str(err))
    try:
        results = ingest_many(entries, settings, workers=workers, progress=progress, max_retries=max_retries)
    except SourceError as err:
        _fail(str(err))
    n_failed, reports = 0, []
    for entry, result in zip(entries, results, strict=True):
        if isinstance(result, Exception):
            err_console.print(f"[red]{entry.name}: {result}[/]")
            n_failed += 1
            continue
        _print_report(result)
        reports.append(result)
        n_failed += len(result.failed)
    if mixture and reports:
        mix = write_mixture(settings, mixture, reports)
        console.print(f"mixture [bold]{mixture}[/]: " + ", ".join(d.ref for d in mix.datasets))
    if n_failed:
        err_console.print(f"[bold red]{n_failed} item(s) failed[/]; reasons above and in each _manifest.parquet")
        raise typer.Exit(1)


def _print_report(report) -> None:
    c = report.card.counts
    verb = "up to date" if report.processed == 0 else f"processed {report.processed}, skipped {report.skipped}"
    console.print(
        f"[bold]{report.dataset}[/] @ {report.version}: {verb}; {c.items_ok}/{c.items} items ok, "
        f"{c.rows:,} windows, {c.tokens:,} tokens, {c.spikes:,} spikes "
        f"({report.seconds:.1f} s)\n  → {report.path}"
    )
    for f in report.failed:
        err_console.print(f"  [red]failed[/] {f.rel}: {f.error}")
    for rel in getattr(report, "retried", []):
        console.print(f"  [yellow]retried[/] {rel}: its worker process died; the retry succeeded")


@app.command()
def inspect(
    dataset: str = typer.Argument(..., help="dataset name, or name@version"),
    plot: Path = typer.Option(None, "--plot", help="write a raster/rate figure (PNG) here"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """Sessions, units, windows, tokens, spikes, firing rates and failed items of a dataset version."""
    from neurobridge.store.versions import resolve_dataset
    from neurobridge.workflows import inspect as inspection

    settings = get_settings()
    try:
        ref = resolve_dataset(settings, dataset)
    except StoreError as err:
        _fail(str(err))
    sessions = inspection.session_summaries(ref, settings)
    failed = inspection.failed_items(ref, settings)
    pct = inspection.rate_percentiles(sessions)
    if as_json:
        print(
            json.dumps(
                {
                    "dataset": ref.dataset,
                    "version": ref.version,
                    "path": ref.path,
                    "counts": ref.card.counts.model_dump(),
                    "splits": ref.card.splits,
                    "rates_hz": pct,
                    "sessions": [{k: v for k, v in s.__dict__.items() if k != "rates_hz"} for s in sessions],
                    "failed": failed,
                },
                indent=2,
                default=str,
            )
        )
    else:
        c = ref.card.counts
        console.print(f"[bold]{ref.dataset}[/] @ {ref.version}  ({ref.path})")
        console.print(
            f"{c.sessions} sessions · {c.units:,} units · {c.rows:,} windows · {c.tokens:,} tokens · "
            f"{c.spikes:,} spikes · {c.clipped} clipped cells · splits {ref.card.splits}"
        )
        table = Table("session", "subject", "units", "regions", "windows", "spikes", "median rate (Hz)")
        for s in sessions:
            regions = ", ".join(f"{k}:{v}" for k, v in s.regions.items())
            med = float(np.median(s.rates_hz)) if len(s.rates_hz) else 0.0
            table.add_row(s.session, s.subject, str(s.units), regions, f"{s.windows:,}", f"{s.spikes:,}", f"{med:.2f}")
        console.print(table)
        if pct:
            console.print("firing rate (Hz): " + "  ".join(f"{k} {v:.2f}" for k, v in pct.items()))
        for f in failed:
            console.print(f"[red]failed[/] {f['rel']}: {f['error']}")
        console.print(f"read it with polars: pl.read_parquet('{ref.path}/part-*.parquet')")
    if plot:
        inspection.plot(ref, settings, str(plot), sessions)
        console.print(f"figure → {plot}")


@bench_app.command("ingest")
def bench_ingest(
    units: int = typer.Option(500, help="units in the benchmark session (Neuropixels sessions hold 300-1000)"),
    minutes: float = typer.Option(10.0, help="session length (≥ 5M spikes at the defaults)"),
    growth: int = typer.Option(8, help="second session this many times longer, for the RSS check (1: skip)"),
    workdir: str = typer.Option(None, help="where benchmark sessions are cached"),
    repeats: int = typer.Option(3),
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
            _fail(f"--workers takes comma-separated counts, e.g. 1,2 (got {workers!r})")
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
        _fail(f"unknown --source {source!r}: nwb, pile or tvsd")
    from neurobridge.bench.ingest import bench_ingest as run

    run(n_units=units, minutes=minutes, growth=growth, workdir=workdir, repeats=repeats, echo=console.print)


@bench_app.command("embed-images")
def bench_embed_images_cmd(
    images: int = typer.Option(256, help="images in the smaller run"),
    growth: int = typer.Option(4, help="second run with this many times more images, for the memory check (1: skip)"),
    arch: str = typer.Option("b32", help="b32 (ViT-B/32-shaped, random weights) or tiny"),
    batch_size: int = typer.Option(32),
    cpus: int = typer.Option(None, help="logical CPUs for the job's local Ray (default: all)"),
    workdir: str = typer.Option(None, help="where images and the model are cached"),
):
    """embed-images throughput against a plain loop in the same run, and the job's peak memory at N vs growth×N."""
    from neurobridge.bench.images import ARCHS, bench_embed_images

    if arch not in ARCHS:
        _fail(f"unknown --arch {arch!r}: {', '.join(ARCHS)}")
    bench_embed_images(
        n_images=images, growth=growth, arch=arch, batch_size=batch_size, workdir=workdir, cpus=cpus, echo=console.print
    )


@bench_app.command("align")
def bench_align_cmd(
    images: int = typer.Option(500, help="simulated images"),
    repeats: int = typer.Option(5, help="presentations per image"),
    test: int = typer.Option(100, help="test stimuli (candidates for retrieval)"),
    epochs: int = typer.Option(60),
    pretrain_steps: int = typer.Option(
        0, help="also pretrain a small encoder this many steps: pretrained vs untrained"
    ),
    workdir: str = typer.Option(None),
    ray_train: bool = typer.Option(False, "--ray-train", help="also fit 'all' on Ray Train: tokens/s vs the plain fit"),
):
    """Alignment on simulated V1/V4/IT: retrieval per region set (chance, ridge baseline beside it), tokens/s."""
    from neurobridge.bench.align import AlignBenchConfig, bench_align

    bench = AlignBenchConfig(
        n_images=images, repeats=repeats, n_test=test, epochs=epochs, pretrain_steps=pretrain_steps, ray_train=ray_train
    )
    bench_align(bench, workdir=workdir, echo=console.print)


@app.command()
def demo(
    minutes: float = typer.Option(2.0, help="minutes per simulated session"),
    seed: int = typer.Option(0),
    pretrain_steps: int = typer.Option(150, help="pretraining steps (0: stop after ingest)"),
    align: bool = typer.Option(True, help="align the visual sessions to their images (stage 6)"),
):
    """The end-to-end demo: simulate → ingest → inspect → pretrain → evaluate → align."""
    from neurobridge.workflows.demo import run_demo

    code = run_demo(minutes=minutes, seed=seed, console=console, pretrain_steps=pretrain_steps, align=align)
    raise typer.Exit(code)


@app.command("allen-env")
def allen_env(
    path: Path = typer.Option(None, help="environment directory (default: $NB_ALLENSDK_ENV or ~/.cache/neurobridge)"),
):
    """Create (once) the separate allensdk environment and print its interpreter for NB_ALLENSDK_PYTHON."""
    from neurobridge.sources.io.allensdk_env import ensure_env

    try:
        python = ensure_env(path)
    except (RuntimeError, OSError) as err:
        _fail(str(err))
    typer.echo(str(python))  # plain, never wrapped: meant for $(neurobridge allen-env)


@app.command("simulate-allen")
def simulate_allen(
    out: str = typer.Option(None, help="output root (default: <NB_RAW>/allen_cache; any fsspec URI)"),
    seed: int = typer.Option(0),
    sessions: int = typer.Option(2, help="natural-scenes sessions"),
    fc_sessions: int = typer.Option(1, help="functional_connectivity sessions (no natural scenes)"),
):
    """Write an Allen Visual Coding EcephysProjectCache look-alike (sessions.csv, session and LFP NWB files)."""
    from neurobridge.sim.allen import AllenSimConfig, simulate_allen_cache

    out = out or f"{get_settings().raw_root}/allen_cache"
    index = simulate_allen_cache(out, AllenSimConfig(seed=seed, sessions=sessions, fc_sessions=fc_sessions))
    for s in index["sessions"]:
        console.print(f"{s['path']}  {s['session_type']}  units {len(s['unit_ids'])} (pass {sum(s['passes_filter'])})")


@app.command("embed-images")
def embed_images_cmd(
    images: str = typer.Option(None, help="images root: local path or any fsspec URI (THINGS: <concept>/<file>.jpg)"),
    model: str = typer.Option(None, help="CLIP vision model: local directory, fsspec URI of one, or hub id"),
    name: str = typer.Option(None, help="output: <store>/embeddings/<name>/"),
    config: Path = typer.Option(None, help="YAML EmbedConfig; the options above override it"),
    id_prefix: str = typer.Option(None, help="stimulus_id = <prefix>/<relative path> (e.g. things, sim_ns)"),
    strip_extension: bool = typer.Option(None, "--strip-extension/--keep-extension", help="drop .jpg/.png from ids"),
    mapping: str = typer.Option(None, help="JSON or CSV (path,stimulus_id) naming the ids instead"),
    batch_size: int = typer.Option(None, help="images per model call"),
    device: str = typer.Option(None, help="auto | cpu | cuda"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Embed images with a CLIP vision model (Ray Data) into Parquet; undecodable images are named and skipped."""
    from neurobridge.align.config import ConfigError, EmbedConfig, load_yaml
    from neurobridge.align.embed_images import embed_images
    from neurobridge.align.image_files import EmbedError

    opts = {
        "images": images,
        "model": model,
        "name": name,
        "id_prefix": id_prefix,
        "strip_extension": strip_extension,
        "mapping": mapping,
        "batch_size": batch_size,
        "device": device,
    }
    try:
        cfg = load_yaml(EmbedConfig, config, {k: v for k, v in opts.items() if v is not None})
        report = embed_images(cfg, get_settings(), progress=progress)
    except (ConfigError, EmbedError, StoreError) as err:
        _fail(str(err))
    c = report.card["counts"]
    console.print(
        f"[bold]{cfg.name}[/]: {c['embedded']:,} of {c['listed']:,} images embedded (dim "
        f"{report.card['dim']}, {report.card['device']}), {c['failed']} failed, {c['unmapped']} unmapped, "
        f"{report.images_per_s:,.1f} images/s → {report.path}"
    )
    for f in report.failed:
        console.print(f"[red]failed[/] {f['path']}: {f['error']}")


app.command()(cli_train.pretrain)
app.command()(cli_train.finetune)
app.command()(cli_train.align)
app.command()(cli_train.evaluate)
app.command()(cli_registry.embed)
app.command()(cli_tune.ablate)
app.command()(cli_tune.report)
bench_app.command("train")(cli_train.bench_train)
bench_app.command("model")(cli_train.bench_model)


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover - python -m neurobridge.cli
    main()
