"""Deliberate worker deaths, for fault-tolerance tests and chaos drills on a cluster.

Production code only names fault points (``config.fault_point``); this module is the hook that acts on them, and
only when a spec is set. Specs travel to workers inside the settings (or a training loop's config), so a drill
needs no runtime_env change. Deaths are hard (``os._exit``: no exception, no cleanup, like the OOM killer or a
lost spot node).

Ingest (``NB_CHAOS``, ``Settings.chaos``): a matching item's Ray worker exits on its first ``attempts`` tries, at
``at``:

- ``start``: before the item's source is opened;
- ``write``: after its first chunk of rows went into the uncommitted Parquet part (the part must never appear).

Example: ``NB_CHAOS='{"kill": "*ses-2*", "attempts": 1, "at": "write"}'`` kills the worker ingesting the items
whose relative path matches ``*ses-2*`` once; Ray's retry must then produce exactly the rows of a clean run.

Training (``NB_FAULT_KILL_WORKER_AT_STEP='<step>:<marker file>'``, ``Settings.train_fault``): rank 0 exits once at
that step (the marker file records that it did), so Ray Train must resume from the last checkpoint.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from neurobridge.config import task_attempt

ENV = "NB_CHAOS"
POINTS = ("start", "write")
TRAIN_ENV = "NB_FAULT_KILL_WORKER_AT_STEP"


class ChaosError(ValueError):
    """An ``NB_CHAOS`` value that is not a valid spec; the message names the key."""


class ChaosSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kill: str = Field(description="glob on the item's relative path or key")
    attempts: int | Literal["all"] = Field(1, description="kill the first N attempts (Ray retries), or all")
    at: Literal["start", "write"] = "write"

    def kills(self, rel: str, key: str, point: str, attempt: int) -> bool:
        if point != self.at or not (fnmatch.fnmatch(rel, self.kill) or fnmatch.fnmatch(key, self.kill)):
            return False
        return self.attempts == "all" or attempt < self.attempts


def parse(raw: str | None) -> ChaosSpec | None:
    if not raw:
        return None
    try:
        return ChaosSpec.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(spec)"
        raise ChaosError(f"{ENV}: {key}: {first['msg']} (got {raw!r})") from None


def maybe_kill(raw: str | None, rel: str, key: str, point: str) -> None:
    """Exit this process now if the spec says so for this item, point and attempt; otherwise do nothing."""
    if not raw:
        return
    spec = parse(raw)
    attempt = task_attempt()
    if spec is not None and spec.kills(rel, key, point, attempt):
        sys.stderr.write(
            f"{ENV}: killing worker pid {os.getpid()} ingesting {rel} at {point!r}, attempt {attempt + 1}\n"
        )
        sys.stderr.flush()
        os._exit(1)


def train_kill(raw: str | None, step: int, rank: int) -> None:
    """Exit rank 0 once (the marker file says it happened) when training reaches ``step``."""
    if not raw or rank != 0:
        return
    at, _, marker = raw.partition(":")
    if step >= int(at) and not os.path.exists(marker):
        Path(marker).write_text(f"killed at step {step}\n")
        os._exit(17)


def inject(specs: dict[str, str], point: str, **context) -> None:
    """The fault hook named by ``config.FAULT_HOOK``: act on ``point`` if a spec says so; "check" only parses."""
    if point == "check":
        parse(specs.get("chaos"))
        raw = specs.get("train_fault")
        if raw and not raw.partition(":")[0].isdigit():
            raise ChaosError(f"{TRAIN_ENV}: expected '<step>:<marker file>', got {raw!r}")
    elif point.startswith("ingest."):
        maybe_kill(specs.get("chaos"), context["rel"], context["key"], point.removeprefix("ingest."))
    elif point == "train.step":
        train_kill(specs.get("train_fault"), context["step"], context["rank"])
