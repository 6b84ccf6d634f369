"""allensdk in its own virtual environment: created once, then asked (by subprocess) to list a cache manifest.

allensdk 2.16 pins numpy<1.24, pandas 1.5.3 and scipy<1.11, while the core runs numpy 2 and pandas 3, so the
core never imports it. ``ensure_env`` builds a venv holding only allensdk (about 2 minutes, once; a stamp file
records what was installed), and ``list_sessions`` runs ``allensdk_listing.py`` there and reads its JSON.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

from neurobridge.catalog import EcephysCache
from neurobridge.sources.base import SourceError

ALLENSDK_REQUIREMENT = "allensdk==2.16.2"
ADAPTER = Path(__file__).with_name("allensdk_listing.py")
LIST_TIMEOUT_S = 300


def default_env_dir() -> Path:
    """``$NB_ALLENSDK_ENV``, else a per-user cache keyed by the allensdk pin and this Python's version."""
    if os.environ.get("NB_ALLENSDK_ENV"):
        return Path(os.environ["NB_ALLENSDK_ENV"])
    tag = f"{ALLENSDK_REQUIREMENT.replace('==', '-')}-py{sys.version_info[0]}{sys.version_info[1]}"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "neurobridge" / tag


def env_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_env(env_dir: Path | None = None, requirement: str = ALLENSDK_REQUIREMENT, timeout_s: int = 900) -> Path:
    """The allensdk interpreter, installing the environment first if it is missing or holds another pin.

    A lock file serialises concurrent callers (parallel test sessions on one machine); a failed install leaves
    no stamp, so the next call starts over.
    """
    env_dir = Path(env_dir or default_env_dir())
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    stamp = env_dir / ".neurobridge-installed"
    with open(env_dir.parent / f".{env_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text().strip() == requirement and env_python(env_dir).exists():
            return env_python(env_dir)
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        cmd = [str(env_python(env_dir)), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"installing {requirement} into {env_dir} failed:\n{out.stderr[-4000:]}")
        stamp.write_text(requirement + "\n")
    return env_python(env_dir)


def allensdk_python(cache: EcephysCache) -> str:
    python = cache.allensdk_python or os.environ.get("NB_ALLENSDK_PYTHON")
    if not python:
        raise SourceError(
            "nwb.cache.manifest needs the allensdk environment's interpreter: set NB_ALLENSDK_PYTHON or "
            "nwb.cache.allensdk_python (`neurobridge allen-env` creates one)"
        )
    return python


def list_sessions(cache: EcephysCache, root: str) -> dict:
    """Sessions of the manifest (relative paths are below the entry's ``root``), as allensdk lists them."""
    manifest = cache.manifest if os.path.isabs(cache.manifest) else os.path.join(root, cache.manifest)
    if not os.path.isfile(manifest):
        raise SourceError(f"{manifest}: no such allensdk manifest (allensdk caches are local directories)")
    python = allensdk_python(cache)
    cmd = [python, "-I", str(ADAPTER), manifest]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=LIST_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SourceError(f"{manifest}: running allensdk ({python}) failed: {err}") from None
    if out.returncode != 0:
        raise SourceError(f"{manifest}: allensdk could not list the cache:\n{out.stderr[-3000:]}")
    try:
        listing = json.loads(out.stdout)
    except json.JSONDecodeError as err:
        raise SourceError(f"{manifest}: the allensdk listing is not JSON ({err}): {out.stdout[:200]!r}") from None
    return listing
