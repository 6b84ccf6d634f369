"""`neurobridge …`: the command line over the library (typer + rich), one module per area."""

from neurobridge.cli.app import app, main

__all__ = ["app", "main"]
