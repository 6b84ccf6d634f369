"""What a person watching a long job sees: one rich progress bar over a count (windows, images), and library
chatter (Ray, Ray Data, MLflow) routed to a log file instead of the terminal."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from neurobridge.config import QUIET_RAY


class CountBar:
    """``with CountBar(on, total, "embedding windows") as bar: bar.advance(n)``; ``fields`` add counters shown beside
    the bar (e.g. ``failed=0``), updated through ``advance(n, failed=…)``."""

    def __init__(self, enabled: bool, total: int, description: str, **fields: int):
        self.bar = self.task = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            extra = [TextColumn(f"{{task.fields[{k}]}} {k}") for k in fields]
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra, TimeElapsedColumn()
            )
            self.task = self.bar.add_task(description, total=total, **fields)

    def __enter__(self) -> CountBar:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def advance(self, n: int, **fields: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, **fields)


# -- what a person sees: one line per stage; library chatter goes to a log file ------------------------------------

# Loggers whose INFO/WARNING output is for whoever debugs a run, not for the person watching it.
CHATTY = ("ray", "mlflow", "alembic", "urllib3", "filelock", "datalad", "py.warnings", "huggingface_hub")
_QUIET: dict = {"log": None}


def quiet_libraries(log_dir: str | Path) -> Path:
    """Route Ray's, Ray Data's and MLflow's progress bars, warnings and info lines to ``<log_dir>/neurobridge.log``
    (and Ray's worker logs to ``<log_dir>/ray``, a link to the session's log folder), keeping errors on stderr.

    For the CLI and the demo: a person reads one line per stage, not a flood of library logs."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "neurobridge.log"
    to_file = logging.FileHandler(path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    for name in CHATTY:
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [to_file, errors], False
        logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # MLflow's per-download bars
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"  # else importing mlflow puts its console handler back
    os.environ["DATALAD_LOG_TARGET"] = str(log_dir / "datalad.log")  # the same for DataLad (clone notices)
    os.environ["RAY_DATA_LOGGING_CONFIG"] = str(_ray_data_logging(log_dir))
    os.environ.setdefault("TQDM_DISABLE", "1")
    _QUIET["log"] = log_dir
    QUIET_RAY["after_init"] = _quiet_ray
    return path


def _ray_data_logging(log_dir: Path) -> Path:
    """Ray Data re-reads its logging config at every dataset execution (driver and workers): this one keeps its
    session log file and lets only errors reach the console."""
    import yaml

    handler = "ray.data._internal.logging.SessionFileHandler"
    config = {
        "version": 1,
        "formatters": {"ray": {"format": "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}},
        "handlers": {
            "file": {"class": handler, "formatter": "ray", "filename": "ray-data.log"},
            "console": {"class": "logging.StreamHandler", "formatter": "ray", "level": "ERROR"},
        },
        "loggers": {"ray.data": {"level": "DEBUG", "handlers": ["file", "console"], "propagate": False}},
    }
    path = log_dir / "ray-data-logging.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _quiet_ray() -> None:
    """After ``ray.init``: Ray re-installs its console handler; route it again, silence Ray Data's bars, and link
    the session's logs (workers' stdout/stderr included) under the quiet log folder."""
    import ray.data

    quiet_libraries(_QUIET["log"])
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        link = _QUIET["log"] / "ray"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(session / "logs", target_is_directory=True)
    except (AttributeError, OSError):  # a private API moved, or no symlinks here: the logs stay in Ray's folder
        pass
