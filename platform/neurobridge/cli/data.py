"""`neurobridge simulate | ingest | inspect | catalog … | simulate-allen | allen-env`: the data commands (registered
by app.py): simulated recordings, catalog entries, ingest into the token store and what a version holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from neurobridge.catalog import CatalogError, load_catalog, resolve
from neurobridge.cli.output import console, err_console, fail
from neurobridge.config import get_settings
from neurobridge.sources import SourceError
from neurobridge.storage import StoreError

catalog_app = typer.Typer(no_args_is_help=True, help="List and validate catalog entries.")


@catalog_app.command("list")
def catalog_list(directory: Path = typer.Option(None, "--dir", help="catalog directory (default ./catalog)")):
    """Every catalog entry: name, kind, species, task, URI and the file that defines it."""
    try:
        entries = load_catalog(directory)
    except CatalogError as err:
        fail(str(err))
    table = Table("name", "kind", "species", "task", "uri", "file")
    for e in entries.values():
        table.add_row(e.name, e.kind, e.species, e.task, e.uri, Path(e.source_file).name)
    console.print(table)


@catalog_app.command("validate")
def catalog_validate(
    paths: list[Path] = typer.Argument(None, help="YAML files (default: every catalog file)"),
):
    """Check catalog files; each error names the file, the entry, the field and a fix (exit 1 on any)."""
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


def simulate(
    out: str = typer.Option(None, help="output root (default: <NB_RAW>/sim; any fsspec URI)"),
    seed: int = typer.Option(0, help="random seed: the same seed writes the same recordings and true rates"),
    minutes: float = typer.Option(2.0, help="minutes per session"),
    nwb_subjects: int = typer.Option(2, help="subjects recorded as NWB (reaching task)"),
    alf_subjects: int = typer.Option(1, help="subjects recorded as IBL ALF folders with a ONE cache"),
    visual_sessions: int = typer.Option(1, help="Allen-style visual sessions (natural images)"),
    sessions_per_subject: int = typer.Option(2, help="sessions per NWB and per ALF subject"),
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


def ingest(
    refs: list[str] = typer.Argument(..., help="catalog file stems, entry names or YAML paths (e.g. demo)"),
    workers: int = typer.Option(None, help="parallel items (default: Ray's CPUs)"),
    progress: bool = typer.Option(True, help="show Ray Data progress bars"),
    mixture: str = typer.Option(None, help="record the resulting dataset versions as this named mixture"),
    max_retries: int = typer.Option(3, min=0, help="attempts after the worker ingesting an item dies"),
    bin_ms: float = typer.Option(None, help="bin width (ms) for every entry instead of its own (a model has one)"),
):
    """Ingest catalog entries (all in one Ray run) into versioned Parquet; exits 1 if any item failed."""
    from neurobridge.ingest.pipeline import ingest_many
    from neurobridge.store.mixtures import write_mixture

    settings = get_settings()
    try:
        entries = [e for ref in refs for e in resolve(ref)]
        entries = [e.at_bin_ms(bin_ms) for e in entries] if bin_ms is not None else entries
    except CatalogError as err:  # a bad --bin-ms too: at_bin_ms names the entry
        fail(str(err))
    try:
        results = ingest_many(entries, settings, workers=workers, progress=progress, max_retries=max_retries)
    except SourceError as err:
        fail(str(err))
    unlisted, reports = [], []
    for entry, result in zip(entries, results, strict=True):
        if isinstance(result, Exception):
            err_console.print(f"[red]{entry.name}: {result}[/]")
            unlisted.append(entry.name)
            continue
        _print_report(result)
        reports.append(result)
    if mixture and reports:
        mix = write_mixture(settings, mixture, reports)
        console.print(f"mixture [bold]{mixture}[/]: " + ", ".join(d.ref for d in mix.datasets))
    if _say_failures(unlisted, reports):
        raise typer.Exit(1)


def _say_failures(unlisted: list[str], reports: list) -> bool:
    """One closing line per kind of failure, each pointing at where its reasons are; True if anything failed."""
    if unlisted:
        err_console.print(
            f"[bold red]{len(unlisted)} catalog entr{'y' if len(unlisted) == 1 else 'ies'} not ingested[/] "
            f"({', '.join(unlisted)}): nothing was listed, so no version or manifest was written; reasons above"
        )
    partial = [r for r in reports if r.failed]
    if partial:
        n = sum(len(r.failed) for r in partial)
        manifests = ", ".join(f"{r.path}/_manifest.parquet" for r in partial)
        err_console.print(f"[bold red]{n} item(s) failed[/]; reasons above and in {manifests}")
    return bool(unlisted or partial)


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
        fail(str(err))
    sessions = inspection.session_summaries(ref, settings)
    failed = inspection.failed_items(ref, settings)
    pct = inspection.rate_percentiles(sessions)
    if as_json:
        print(
            json.dumps(
                {
                    "status": ref.card.status,
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
        if ref.card.partial:
            console.print(
                f"[bold red]PARTIAL[/]: {c.items_failed} of {c.items} items failed (listed below); training, "
                "alignment and evaluation refuse this version unless allow_partial: true"
            )
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


def allen_env(
    path: Path = typer.Option(None, help="environment directory (default: $NB_ALLENSDK_ENV or ~/.cache/neurobridge)"),
):
    """Create (once) the separate allensdk environment and print its interpreter for NB_ALLENSDK_PYTHON."""
    from neurobridge.sources.io.allensdk_env import ensure_env

    try:
        python = ensure_env(path)
    except (RuntimeError, OSError) as err:
        fail(str(err))
    typer.echo(str(python))  # plain, never wrapped: meant for $(neurobridge allen-env)


def simulate_allen(
    out: str = typer.Option(None, help="output root (default: <NB_RAW>/allen_cache; any fsspec URI)"),
    seed: int = typer.Option(0, help="random seed of the look-alike sessions"),
    sessions: int = typer.Option(2, help="natural-scenes sessions"),
    fc_sessions: int = typer.Option(1, help="functional_connectivity sessions (no natural scenes)"),
):
    """Write an Allen Visual Coding EcephysProjectCache look-alike (sessions.csv, session and LFP NWB files)."""
    from neurobridge.sim.allen import AllenSimConfig, simulate_allen_cache

    out = out or f"{get_settings().raw_root}/allen_cache"
    index = simulate_allen_cache(out, AllenSimConfig(seed=seed, sessions=sessions, fc_sessions=fc_sessions))
    for s in index["sessions"]:
        console.print(f"{s['path']}  {s['session_type']}  units {len(s['unit_ids'])} (pass {sum(s['passes_filter'])})")
