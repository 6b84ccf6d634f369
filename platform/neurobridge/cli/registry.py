"""`neurobridge registry list|register|promote|load` and `neurobridge embed` (registered by cli.py)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)
registry_app = typer.Typer(no_args_is_help=True, help="MLflow model registry: register runs, move aliases, load.")


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _errors():
    from neurobridge.models.checkpoint import CheckpointError
    from neurobridge.storage import StoreError
    from neurobridge.tracking.mlflow_run import TrackingError
    from neurobridge.tracking.registry import RegistryError

    return RegistryError, TrackingError, StoreError, CheckpointError


def _print_version(v) -> None:
    console.print(f"[bold]{v.uri}[/]  aliases: {', '.join('@' + a for a in v.aliases) or '-'}  run: {v.run_id}")
    for k, val in v.lineage().items():
        console.print(f"  {k:<22} {val}")


@registry_app.command("list")
def list_cmd(name: str = typer.Argument(None, help="only this registered model")):
    """Registered models: versions, aliases and lineage (datasets, config hash, commit, metrics)."""
    from neurobridge.config import get_settings
    from neurobridge.tracking.registry import list_versions

    try:
        versions = list_versions(get_settings(), name)
    except _errors() as err:
        _fail(str(err))
    if not versions:
        console.print("no registered models")
        return
    table = Table("name", "version", "aliases", "kind", "evaluation", "datasets", "config", "commit", "metrics")
    for v in versions:
        t = v.tags
        forced = ", ".join(f"@{k[7:]} forced" for k in t if k.startswith("forced."))
        table.add_row(
            v.name,
            v.version,
            ", ".join("@" + a for a in v.aliases),
            t.get("kind", ""),
            "\n".join(x for x in (t.get("evaluation", ""), forced) if x),
            "\n".join(f"{k[8:]}@{x}" for k, x in sorted(t.items()) if k.startswith("dataset.")),
            t.get("config_hash", ""),
            t.get("git_commit", "")[:10],
            " ".join(f"{k[7:]}={x}" for k, x in sorted(t.items()) if k.startswith("metric.")),
        )
    console.print(table)


@registry_app.command("register")
def register_cmd(
    run: str = typer.Option(..., help="MLflow run id of a FINISHED pretrain or align run"),
    name: str = typer.Option(..., help="registered model name (created if new)"),
    alias: str = typer.Option("candidate", help="alias for the new version ('' for none)"),
):
    """Register a finished run's model (pyfunc: code + weights-only checkpoint) with its lineage and, once
    `neurobridge evaluate runs:/<run id>` ran, its evaluation metrics beside their baselines."""
    from neurobridge.config import get_settings
    from neurobridge.inference.registrable import register

    try:
        v = register(run, name, alias or None, get_settings())
    except _errors() as err:
        _fail(str(err))
    console.print("[green]registered[/]")
    _print_version(v)


@registry_app.command("promote")
def promote_cmd(
    name: str = typer.Argument(..., help="registered model name"),
    alias: str = typer.Option("champion", help="alias to move"),
    version: str = typer.Option(None, help="version to point it at (default: the one at @candidate)"),
    force: bool = typer.Option(
        False, help="promote to @champion even without an evaluation or below its baseline (recorded on the version)"
    ),
):
    """Point an alias (champion by default) at a version. @champion needs an evaluation that reaches the model's
    baseline (encoders: `neurobridge evaluate runs:/<run id>`; co-bps at least smoothing's) unless --force."""
    from neurobridge.config import get_settings
    from neurobridge.inference.registrable import Promotion, promote

    try:
        v = promote(Promotion(name, alias, version, force), get_settings())
    except _errors() as err:
        _fail(str(err))
    console.print(f"[green]@{alias}[/] → version {v.version}")
    _print_version(v)


@registry_app.command("load")
def load_cmd(uri: str = typer.Argument(..., help="models:/<name>@<alias> or models:/<name>/<version>")):
    """Load a registered model as MLflow would serve it and say what it is."""
    from neurobridge.config import get_settings
    from neurobridge.tracking.registry import load

    try:
        model, v = load(uri, get_settings())
    except _errors() as err:
        _fail(str(err))
    _print_version(v)
    inputs = ", ".join(model.metadata.get_input_schema().input_names())
    if v.tags.get("kind") == "align":
        py = model.unwrap_python_model()
        for name, proj in py.projectors.items():
            sessions = ", ".join(f"{s} ({d:,} features)" for s, d in proj.in_dims.items())
            console.print(f"  projector {name}: regions {py.card['regions'].get(name)}; sessions {sessions}")
        console.print(f"  input: one row per response: {inputs}")
        console.print(escape(f"  output: float32 [rows, {py.dim}] (L2-normalised, {py.card['embedding_model']} space)"))
        return
    enc = model.unwrap_python_model().encoder
    cfg = enc.model.cfg
    sizes = enc.vocabs.sizes()
    console.print(
        f"  encoder: d_model {cfg.d_model}, depth {cfg.depth}, {cfg.neurons_per_token} units/token, "
        f"{sum(p.numel() for p in enc.model.parameters()):,} parameters; sessions {sizes['session']}, "
        f"units {sizes['unit']}"
    )
    console.print(f"  input: one row per window: {inputs}")
    console.print(escape(f"  output: float32 [windows, {enc.dim}] (mean of the encoder's token latents)"))


def embed(
    dataset: str = typer.Argument(..., help="dataset ref in the token store: name or name@version"),
    model: str = typer.Option(..., help="models:/<name>@<alias> or models:/<name>/<version>"),
    split: str = typer.Option(None, help="train | val | test (default: every window)"),
    out: str = typer.Option(None, "--out", help="output name: <store>/embeddings_neural/<out>/"),
    batch_size: int = typer.Option(64, help="windows per encoder call"),
    workers: int = typer.Option(1, help="embedding tasks in flight (one model copy each)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Neural embeddings (one pooled encoder latent per window) of a dataset with a registered model."""
    from pydantic import ValidationError

    from neurobridge.config import get_settings
    from neurobridge.inference.embed import EmbedConfig
    from neurobridge.inference.embed import embed as run

    try:
        cfg = EmbedConfig(model=model, dataset=dataset, split=split, name=out, batch_size=batch_size, workers=workers)
        result = run(cfg, get_settings(), progress=progress)
    except ValidationError as err:
        _fail(str(err))
    except _errors() as err:
        _fail(str(err))
    c = result.card
    console.print(
        f"[bold]{c['name']}[/]: {c['counts']['windows']:,} windows of {c['dataset']['name']}@"
        f"{c['dataset']['version']} ({c['split'] or 'all splits'}) → dim {c['dim']} with {c['model']['uri']}"
        f" ({c['model']['requested']}); {c['windows_per_s']:,.1f} windows/s end to end, "
        f"{c['encoder_windows_per_s'] or float('nan'):,.1f} per worker in the encoder → "
        f"{result.path}"
    )
    if c["counts"]["new_sessions"]:
        console.print(f"sessions new to the model (vocabularies extended): {', '.join(c['counts']['new_sessions'])}")
