"""Settings: the one place where store, tracking and cluster locations are decided.

Defaults are the embedded setup (local store directory, MLflow on SQLite, in-process Ray); every value can be
overridden from the environment so that the same code runs against S3, an MLflow server or a running cluster.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

ENV_VARS = {
    "store": "NB_STORE",
    "raw_root": "NB_RAW",
    "mlflow_uri": "NB_MLFLOW_URI",
    "s3_endpoint": "NB_S3_ENDPOINT",
    "ray_address": "RAY_ADDRESS",
    "ray_num_cpus": "NB_RAY_NUM_CPUS",
    "chaos": "NB_CHAOS",
    "train_fault": "NB_FAULT_KILL_WORKER_AT_STEP",
}
FAULT_HOOK = "neurobridge.testing.faults:inject"  # imported by name: production code never imports test code


def _home() -> Path:
    return Path(os.environ.get("NB_HOME") or "./.neurobridge").absolute()  # empty: unset, like the other NB_*


def log_dir() -> Path:
    """Where the CLI and the demo keep the library logs they do not print: ``<NB_HOME>/logs``."""
    return _home() / "logs"


class Settings(BaseModel):
    """Resolved settings. Build with :func:`get_settings` so environment overrides apply."""

    store: str = Field(description="token store root: a local path or any fsspec URI (s3://bucket/prefix)")
    raw_root: str = Field(description="where relative catalog URIs and simulator output live")
    mlflow_uri: str
    s3_endpoint: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto, Ceph)")
    ray_address: str | None = Field(default=None, description="None starts a local Ray in-process")
    ray_num_cpus: int | None = Field(default=None, description="logical CPUs for a local Ray")
    chaos: str | None = Field(
        default=None,
        description="ingest fault-injection spec for drills and tests (JSON, neurobridge.testing.faults); unset: off",
    )
    train_fault: str | None = Field(
        default=None, description="'<step>:<marker file>': kill training rank 0 once at that step (resume drills)"
    )
    source_options: dict[str, dict] = Field(
        default_factory=dict,
        description="URI prefix → S3 options of a catalog entry (anon, endpoint_url); set by with_source",
    )

    def storage_options(self, uri: str) -> dict:
        """fsspec options for ``uri``; credentials stay with the provider chain and never pass through here."""
        if uri.startswith(("s3://", "s3a://")):
            opts: dict = {}
            endpoint = self.s3_endpoint
            if os.environ.get("NB_S3_ANON", "").lower() in {"1", "true", "yes"}:
                opts["anon"] = True
            bare = uri.split("://", 1)[1]
            for prefix, extra in sorted(self.source_options.items(), key=lambda kv: len(kv[0])):
                if bare.startswith(prefix.split("://", 1)[-1]):
                    if extra.get("anon"):
                        opts["anon"] = True
                    if extra.get("endpoint_url"):
                        endpoint = None if extra["endpoint_url"] == "aws" else extra["endpoint_url"]
                    if extra.get("requester_pays"):
                        opts["requester_pays"] = True
            if endpoint:
                opts["client_kwargs"] = {"endpoint_url": endpoint}
            return opts
        return {}

    def faults(self) -> dict[str, str]:
        """The fault-injection specs that are set (they travel to Ray workers inside the settings or a loop config)."""
        return {k: v for k, v in {"chaos": self.chaos, "train_fault": self.train_fault}.items() if v}

    def with_source(self, uri: str, options: dict) -> Settings:
        """Settings whose storage options apply a catalog entry's S3 options below its URI (e.g. anonymous
        reads of a public bucket while the store keeps its own credentials)."""
        if not options or not uri.startswith(("s3://", "s3a://")):
            return self
        return self.model_copy(update={"source_options": {**self.source_options, uri: dict(options)}})


@functools.cache
def code_commit() -> str | None:
    """The git commit of the code that runs: ``NB_GIT_COMMIT`` when set (a job whose code was shipped without its
    repository), else ``git rev-parse HEAD`` run where this package lives (not in the working directory, which may be
    any folder a user runs the CLI from); None outside a checkout."""
    if os.environ.get("NB_GIT_COMMIT"):
        return os.environ["NB_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def get_settings(**overrides) -> Settings:
    home = _home()
    values: dict = {
        "store": str(home / "store"),
        "raw_root": str(home / "raw"),
        "mlflow_uri": f"sqlite:///{home / 'mlflow.db'}",
    }
    for field, var in ENV_VARS.items():
        if os.environ.get(var):
            values[field] = os.environ[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    refuse_ephemeral(settings)
    return settings


class SettingsError(ValueError):
    """Settings this process must not run with; the message names the variable to set."""


def ray_session_dir(cwd: Path) -> Path | None:
    """Ray's session directory when ``cwd`` lies in a job's runtime_env copy (``<temp dir>/session_<…>/
    runtime_resources/working_dir_files/…``, which Ray makes the job's current directory); None elsewhere."""
    parts = cwd.parts
    for i in range(1, len(parts)):
        if parts[i] == "runtime_resources" and parts[i - 1].startswith("session_"):
            return Path(*parts[:i])
    return None


def _local_path(uri: str) -> Path | None:
    """The local file a store root or MLflow URI writes to (None for object stores and servers)."""
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            return Path(uri[len(prefix) :])
    return None if "://" in uri else Path(uri)


def refuse_ephemeral(settings: Settings, cwd: Path | None = None) -> None:
    """Refuse a store or MLflow database that would be written inside Ray's temporary copy of a job's working
    directory: it is deleted with the Ray session, and with it every dataset version and run of the job. Happens
    when a job runs without NB_STORE / NB_MLFLOW_URI (or an absolute NB_HOME) in its environment."""
    cwd = (cwd or Path.cwd()).absolute()
    session = ray_session_dir(cwd)
    if session is None:
        return
    bad = []
    for field, var in (("store", "NB_STORE"), ("mlflow_uri", "NB_MLFLOW_URI")):
        path = _local_path(getattr(settings, field))
        if path is not None and (cwd / path).resolve().is_relative_to(session.resolve()):
            bad.append(f"{var} (now {getattr(settings, field)})")
    if bad:
        raise SettingsError(
            f"this Ray job would write {' and '.join(bad)} inside Ray's temporary session directory {session}, "
            "which is deleted with the session. Set NB_STORE (a shared path or s3://…) and NB_MLFLOW_URI (an MLflow "
            "server, or sqlite:/// on a lasting volume), or NB_HOME to an absolute lasting path, in the cluster's "
            "environment (cluster.yaml exports them) or in the job's runtime_env env_vars"
        )


def parse_overrides(items: list[str] | None) -> dict:
    """``--set key.sub=value`` pairs (values parse as YAML: numbers, lists, null) → {dotted key: value}; one parser
    for the CLI and the job scripts."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value (e.g. optim.max_steps=200)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def parse_job_args(parser) -> tuple[object, dict]:
    """A job script's arguments plus its ``--set key=value`` overrides (a malformed one is a usage error)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted; the value parses as YAML)",
    )
    args = parser.parse_args()
    try:
        return args, parse_overrides(args.overrides)
    except ValueError as e:
        parser.error(str(e))


def _fields(model: type[BaseModel]) -> dict:
    return {(f.alias or n): f for n, f in model.model_fields.items()}  # as written in files: aliases where set


def _inner_model(field) -> type[BaseModel] | None:
    """The model a field holds (directly or inside Optional/list/Union), or None for plain values and mappings."""
    ann = field.annotation
    return next(
        (a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None
    )


def override_error(model: type[BaseModel], key: str) -> str | None:
    """Why the override ``key`` (``--set key=…``, an ablation axis) names no field of ``model`` (the unknown part,
    where, and the nearest valid key), or None when it does. Keys below a free-form mapping (``region_sets.IT``) are
    not checked."""
    current: type[BaseModel] | None = model
    parts = key.split(".")
    for i, part in enumerate(parts):
        if current is None:
            return None
        fields = _fields(current)
        if part not in fields:
            hint = difflib.get_close_matches(part, list(fields), n=1)
            where = f"under {'.'.join(parts[:i])!r}" if i else "at the top level"
            fix = f"did you mean {hint[0]!r}?" if hint else f"valid: {', '.join(fields)}"
            return f"override {key!r} (--set): no key {part!r} {where}; {fix}"
        current = _inner_model(fields[part])
    return None


class ConfigError(ValueError):
    """A config file or override that does not fit its typed config; the message names the key and a fix."""


def load_yaml(model: type[BaseModel], path: str | Path | None, overrides: dict | None = None):
    """A typed config from a YAML file (or the defaults) plus dotted ``--set`` overrides; errors name the file and
    the key, and a misspelt override is named as one."""
    import yaml

    data: dict = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
    for key, value in (overrides or {}).items():
        problem = override_error(model, key)
        if problem:
            raise ConfigError(problem)
        set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, model, config_label(path, overrides))) from None


def config_label(path: object, overrides: dict | None) -> str:
    """Where a config's values came from, for its validation errors: the file (or the defaults) and the --set keys."""
    base = str(path) if path else "the defaults"
    return base + (f" with --set {', '.join(overrides)}" if overrides else "")


def set_dotted(data: dict, key: str, value) -> None:
    """``data["a"]["b"] = value`` for ``key="a.b"``, creating the parents."""
    *parents, last = key.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[last] = value


# -- fault injection: named points where drills and tests may kill a worker -------------------------------------


def _fault_hook():
    import importlib

    module, _, name = FAULT_HOOK.partition(":")
    return getattr(importlib.import_module(module), name)


def fault_point(faults: Settings | dict[str, str] | None, point: str, **context) -> None:
    """Give a drill the chance to inject a fault here (``point``: "ingest.start", "ingest.write", "train.step").

    Off (one dict lookup) unless a fault spec is set: the hook that acts on it lives in ``neurobridge.testing``."""
    specs = faults.faults() if isinstance(faults, Settings) else (faults or {})
    if specs:
        _fault_hook()(specs, point, **context)


def check_faults(settings: Settings) -> None:
    """Parse the fault specs once on the driver, so a bad one fails here and not in every worker."""
    if settings.faults():
        _fault_hook()(settings.faults(), "check")


# -- readable validation errors (catalog files, job configs, ablation specs) ------------------------------------


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names at the location of an error, for hints."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str) or part not in _fields(current):
            return []
        current = _inner_model(_fields(current)[part])
    return list(_fields(current)) if current else []


def describe_validation_error(err: ValidationError, model: type[BaseModel], where: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        field = ".".join(str(p) for p in loc) or "(entry)"
        if e["type"] == "extra_forbidden":
            valid = [f for f in _field_names(model, loc) if f != "source_file"]
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"valid fields here: {', '.join(valid)}"
            lines.append(f"{where}: unknown field {field!r}; {fix}")
        elif e["type"] == "missing":
            lines.append(f"{where}: field {field!r} is required; add it")
        else:  # a check of the whole entry (no loc) says what is wrong; its input would be all of it
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: field {field!r}: {msg} (got {e.get('input')!r})" if loc else f"{where}: {msg}")
    return "\n".join(lines)


# -- Ray: where this code runs -----------------------------------------------------------------------------------

# Set by console.quiet_libraries: where library logs go, and what re-routes Ray's own after ray.init.
QUIET_RAY: dict = {"after_init": None}


def ensure_ray(settings: Settings, min_cpus: int = 0) -> None:
    """Join ``RAY_ADDRESS`` or start a local Ray. ``min_cpus`` declares at least that many logical CPUs locally:
    a training worker holding one of a laptop's two CPUs must leave room for Ray Data's read tasks, or both wait
    forever (oversubscribing logical CPUs on a small machine is what keeps them both moving).

    A local Ray started for training (``min_cpus``) runs the dashboard: Ray Train's placement-group cleaner asks the
    state API (served by the dashboard) every second whether the run is alive, and without it logs a warning each
    time, hundreds of lines per run."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    kwargs = {"logging_level": logging.WARNING, "include_dashboard": bool(min_cpus) and not settings.ray_address}
    quiet = QUIET_RAY["after_init"]
    if quiet is not None:  # workers' output (progress bars, Train controller notices) stays in the logs
        kwargs |= {"log_to_driver": False, "logging_level": logging.ERROR}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kwargs)
    else:
        # address="local": never attach to a stale cluster file. Workers at normal priority (Ray's nice 15 lets every
        # wake-up of Ray's own processes stall a worker's threads on a laptop: 15.5k → 19.3k tokens/s, bench train)
        os.environ.setdefault("RAY_worker_niceness", "0")
        cpus = settings.ray_num_cpus
        if cpus is None and min_cpus:
            cpus = max(os.cpu_count() or 1, min_cpus)
        ray.init(address="local", num_cpus=cpus, **kwargs)
    if quiet is not None:
        quiet()


def task_attempt() -> int:
    """0 on a task's first run, n on its n-th retry (Ray retries a task whose worker process died); 0 outside Ray.

    Ray has no public call for this yet; the core worker's counter is read defensively.
    """
    ray = sys.modules.get("ray")  # never import Ray just to ask: plain processes (benchmarks) stay light
    if ray is None:
        return 0
    try:
        if not ray.is_initialized():
            return 0
        worker = ray._private.worker.global_worker
        return int(worker.core_worker.get_current_task_attempt_number())
    except Exception:  # an API move must never break ingest; callers then see every run as a first attempt
        return 0


def worker_origin(timeout_s: float = 300.0) -> str:
    """Where a Ray worker imports neurobridge from, asked before any real work is scheduled.

    On a cluster this shows that the job's code reached the workers (runtime_env ``py_modules``) and not some older
    installed copy; a worker that cannot import the package fails here, with Ray's reason, instead of in the middle
    of an ingest. ``num_cpus=0``: it may run on a head node that schedules no work.
    """
    import ray

    @ray.remote(num_cpus=0)
    def where() -> str:
        import neurobridge

        return os.path.dirname(neurobridge.__file__)

    return ray.get(where.remote(), timeout=timeout_s)
