"""Settings: the one place where store, tracking and cluster locations are decided.

Defaults are the embedded setup (local store directory, MLflow on SQLite, in-process Ray); every value can be
overridden from the environment so that the same code runs against S3, an MLflow server or a running cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

ENV_VARS = {
    "store": "NB_STORE",
    "raw_root": "NB_RAW",
    "mlflow_uri": "NB_MLFLOW_URI",
    "s3_endpoint": "NB_S3_ENDPOINT",
    "ray_address": "RAY_ADDRESS",
    "ray_num_cpus": "NB_RAY_NUM_CPUS",
    "chaos": "NB_CHAOS",
}


def _home() -> Path:
    return Path(os.environ.get("NB_HOME", "./.neurobridge")).absolute()


class Settings(BaseModel):
    """Resolved settings. Build with :func:`get_settings` so environment overrides apply."""

    store: str = Field(description="token store root: a local path or any fsspec URI (s3://bucket/prefix)")
    raw_root: str = Field(description="where relative catalog URIs and simulator output live")
    mlflow_uri: str
    s3_endpoint: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto, Ceph)")
    ray_address: str | None = Field(default=None, description="None starts a local Ray in-process")
    ray_num_cpus: int | None = Field(default=None, description="logical CPUs for a local Ray")
    chaos: str | None = Field(
        default=None, description="fault-injection spec for drills and tests (JSON, see neurobridge.chaos); unset: off"
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

    def with_source(self, uri: str, options: dict) -> Settings:
        """Settings whose storage options apply a catalog entry's S3 options below its URI (e.g. anonymous
        reads of a public bucket while the store keeps its own credentials)."""
        if not options or not uri.startswith(("s3://", "s3a://")):
            return self
        return self.model_copy(update={"source_options": {**self.source_options, uri: dict(options)}})


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
    return Settings(**values)


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


def set_dotted(data: dict, key: str, value) -> None:
    """``data["a"]["b"] = value`` for ``key="a.b"``, creating the parents."""
    *parents, last = key.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[last] = value
