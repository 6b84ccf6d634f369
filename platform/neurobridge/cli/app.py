"""`neurobridge …`: the command line over the library (typer + rich). This module is the root app: it holds the
demo and `embed-images` and registers every other area's commands (data.py, bench.py, train.py, decode.py, evaluate.py,
tune.py, registry.py) in the order `--help` lists them."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from neurobridge.cli import data as cli_data
from neurobridge.cli import decode as cli_decode
from neurobridge.cli import evaluate as cli_evaluate
from neurobridge.cli import registry as cli_registry
from neurobridge.cli import train as cli_train
from neurobridge.cli import tune as cli_tune
from neurobridge.cli.bench import bench_app
from neurobridge.cli.output import console, fail
from neurobridge.config import get_settings, log_dir
from neurobridge.console import quiet_libraries
from neurobridge.storage import StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="NeuroBridge: neural data → tokens → models.")


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False, "--verbose", help="library logs (Ray, Ray Data, MLflow) on the console too; else in <NB_HOME>/logs"
    ),
) -> None:
    """One readable line per stage: library chatter goes to <NB_HOME>/logs unless --verbose; errors always show."""
    if not verbose:
        quiet_libraries(log_dir())


app.add_typer(cli_data.catalog_app, name="catalog")
app.add_typer(bench_app, name="bench")
app.add_typer(cli_registry.registry_app, name="registry")


def demo(
    minutes: float = typer.Option(2.0, help="minutes per simulated session"),
    seed: int = typer.Option(0, help="simulator seed (a rerun with the same seed and size reuses the recordings)"),
    pretrain_steps: int = typer.Option(None, help="pretraining steps (0: stop after ingest; default: the recipe's)"),
    align: bool = typer.Option(True, help="align the visual sessions to their images (stage 6)"),
):
    """The end-to-end demo: simulate → ingest → inspect → pretrain → evaluate → align."""
    from neurobridge.workflows.demo import DEMO_RECIPE, run_demo

    steps = DEMO_RECIPE["optim.max_steps"] if pretrain_steps is None else pretrain_steps
    code = run_demo(minutes=minutes, seed=seed, console=console, pretrain_steps=steps, align=align)
    raise typer.Exit(code)


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
    from neurobridge.align.config import EmbedConfig
    from neurobridge.align.embed_images import embed_images
    from neurobridge.align.image_files import EmbedError
    from neurobridge.config import ConfigError, load_yaml

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
        fail(str(err))
    c = report.card["counts"]
    console.print(
        f"[bold]{cfg.name}[/]: {c['embedded']:,} of {c['listed']:,} images embedded (dim "
        f"{report.card['dim']}, {report.card['device']}), {c['failed']} failed, {c['unmapped']} unmapped, "
        f"{report.images_per_s:,.1f} images/s → {report.path}"
    )
    for f in report.failed:
        console.print(f"[red]failed[/] {f['path']}: {f['error']}")


app.command()(cli_data.simulate)
app.command()(cli_data.ingest)
app.command()(cli_data.inspect)
app.command()(demo)
app.command("allen-env")(cli_data.allen_env)
app.command("simulate-allen")(cli_data.simulate_allen)
app.command("simulate-fmri")(cli_decode.simulate_fmri)
app.command("embed-images")(embed_images_cmd)
app.command()(cli_train.pretrain)
app.command()(cli_train.finetune)
app.command()(cli_train.align)
app.command()(cli_decode.decode)
app.command()(cli_evaluate.evaluate)
app.command("nlb-score")(cli_evaluate.nlb_score)
app.command()(cli_evaluate.transfer)
app.command()(cli_registry.embed)
app.command()(cli_tune.ablate)
app.command()(cli_tune.report)


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover - python -m neurobridge.cli
    main()
