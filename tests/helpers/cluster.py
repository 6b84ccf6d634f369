"""Real servers a test starts in its own process groups and ports: a Ray head (`ray start --head`) and an
`mlflow server`, with the waits and the stop that never touch another cluster on the machine."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# Every port a head node opens, each set to a free one: the defaults (6379, 8265, 52365 …) may be taken by
# another cluster on this machine.
RAY_PORT_FLAGS = (
    "port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "node-manager-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "object-manager-port",
    "ray-client-server-port",
)


_HANDED_OUT: set[int] = set()
# Ray's default range for its workers' own ports: a local Ray started by another test opens them as workers start.
RAY_WORKER_PORTS_END = 20000


def _server_ports() -> range:
    """Ports nothing else on this machine takes by itself: above Ray's worker range and below the kernel's ephemeral
    range. A port from ``bind(0)`` is ephemeral, and between choosing it and the server binding it any outgoing
    connection (a Ray worker's gRPC client) can take it as its local port: the GCS then fails to start."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default; macOS starts at 49152
    return range(RAY_WORKER_PORTS_END, max(low, RAY_WORKER_PORTS_END + 1000))


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports for servers, never one handed out before in this run: the sockets stay bound until
    all are chosen, since a port closed and asked for again can come straight back (Ray then refuses two components
    on one port)."""
    pool = _server_ports()
    rng = random.Random(os.getpid() ^ time.time_ns())
    socks, ports = [], []
    try:
        for _ in range(100 * n):
            if len(ports) == n:
                break
            port = rng.choice(pool)
            if port in _HANDED_OUT:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken: try another
                s.close()
                continue
            socks.append(s)
            _HANDED_OUT.add(port)
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    if len(ports) < n:
        raise RuntimeError(f"found {len(ports)} of {n} free ports in {pool.start}-{pool.stop - 1}")
    return ports


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:  # it answers (401 without a token): up
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process group this test started (never `ray stop`: that would stop every cluster on the machine)."""
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def start_mlflow(bucket: str, env: dict, home: Path) -> tuple[subprocess.Popen, str, Path]:
    """`mlflow server`: runs in SQLite, artifacts proxied to S3 (the placement the README gives for the cluster)."""
    (port,) = free_ports(1)
    log = home / "mlflow.log"
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{bucket}/mlflow",
    ]
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    return proc, f"http://127.0.0.1:{port}", log


def start_ray_head(env: dict, temp: str) -> tuple[subprocess.Popen, str, Path]:
    """`ray start --head --block` in its own process group: 4 logical CPUs (a 2-core node declares more so a training
    worker leaves room for Ray Data, see runtime.ensure_ray), the dashboard (Jobs API) on a free port."""
    ports = dict(zip(RAY_PORT_FLAGS, free_ports(len(RAY_PORT_FLAGS)), strict=True))
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "4",
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--node-ip-address",
        "127.0.0.1",
        "--temp-dir",
        temp,
        "--disable-usage-stats",
        *(x for flag, port in ports.items() for x in (f"--{flag}", str(port))),
    ]
    log = Path(f"{temp}.log")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{ports['dashboard-port']}", log
