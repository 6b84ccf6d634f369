"""The pipeline job on a real Ray cluster that the test starts (its own ports and temp dir, beside the session's
in-process Ray), submitted exactly as the README says, followed through the Jobs API. The job writes its token
store to S3 (moto's server) and tracks its ingest in a real `mlflow server` whose artifacts go to S3 as well.

The cluster's environment carries the locations (NB_STORE, NB_RAW, NB_S3_ENDPOINT, NB_MLFLOW_URI), as cluster.yaml
exports them on every node; the code reaches the workers only through jobs/runtime_env.yaml (py_modules), which
the job proves by printing where its driver and a worker imported neurobridge from.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
import yaml
from neurobridge.config import get_settings
from neurobridge.sim import SimConfig, simulate
from neurobridge.storage import filesystem, join
from neurobridge.store.mixtures import read_mixture
from neurobridge.store.versions import resolve_dataset

pytestmark = pytest.mark.slow  # a cluster, an MLflow server and two jobs: ~90 s on an idle 2-core machine

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VICTIM = "sub-monkey01_ses-s00.nwb"
PY_MODULES = "runtime_resources/py_modules_files/"
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


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports, never one handed out before in this run: the sockets stay bound until all are
    chosen, since a port closed and asked for again can come straight back (Ray then refuses two components on
    one port)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
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


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    name = f"nb-job-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    return fs, name


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


@dataclass
class Stack:
    cluster: str  # dashboard URL: the Jobs API
    mlflow: str
    raw: list[str]  # item names of the simulated sessions in s3://bucket/raw/sim/nwb


@pytest.fixture(scope="module")
def stack(bucket, s3_endpoint, tmp_path_factory):
    """MLflow server and Ray head start together (each takes tens of seconds here) while the raw data is written."""
    fs, name = bucket
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    home = tmp_path_factory.mktemp("services")
    temp = tempfile.mkdtemp(prefix="nbray", dir="/tmp")  # short: Ray's unix socket paths live below it
    mlflow, mlflow_url, mlflow_log = start_mlflow(name, {**aws, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}, home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NB_", "RAY_ADDRESS"))}
    env.update(
        {
            **aws,
            "RAY_AUTH_MODE": "disabled",  # a loopback test cluster; the client below says the same
            "PATH": f"{BIN}{os.pathsep}{env['PATH']}",  # the job's `python` is the first on the head's PATH
            # the locations, as cluster.yaml exports them on every node before `ray start`
            "NB_STORE": f"s3://{name}/store",
            "NB_RAW": f"s3://{name}/raw",
            "NB_S3_ENDPOINT": s3_endpoint,
            "NB_MLFLOW_URI": mlflow_url,
        }
    )
    head, url, head_log = start_ray_head(env, temp)
    try:
        out = home / "sim"
        cfg = SimConfig(
            nwb_subjects=2,
            nwb_sessions_per_subject=2,
            alf_subjects=0,
            visual_sessions=0,
            units_min=20,
            units_max=30,
            minutes=0.5,
            write_images=False,
            write_truth=False,
        )
        simulate(str(out), cfg, progress=False)
        fs.put(str(out / "nwb"), f"{name}/raw/sim/nwb", recursive=True)
        wait_http(f"{mlflow_url}/health", mlflow, mlflow_log, 180)
        wait_http(f"{url}/api/version", head, head_log, 180)
        yield Stack(url, mlflow_url, sorted(p.name for p in (out / "nwb").glob("*.nwb")))
    finally:
        stop(head)
        stop(mlflow)
        shutil.rmtree(temp, ignore_errors=True)
        head_log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def jobs(stack):
    from ray.job_submission import JobSubmissionClient

    prev = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield JobSubmissionClient(stack.cluster)
    finally:
        if prev is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = prev


def pipeline_config(fs, bucket: str, dataset: str, train: bool = False, **ingest) -> str:
    """A pipeline config in S3: the job reads it from there (any fsspec URI works for --config). ``train``: also
    pretrain on Ray Train (a few steps) and register the model in the MLflow server's registry."""
    entry = {"name": dataset, "kind": "nwb", "uri": "sim/nwb", "ingest": {"window": {"mode": "chunks"}}}
    cfg = {
        "name": f"test-{dataset}",
        "stages": ["ingest", "pretrain", "register"] if train else ["ingest"],
        "ingest": {"entries": [entry], "mixture": dataset, **ingest},
    }
    if train:
        cfg["pretrain"] = {
            "name": f"job-{dataset}",
            "model": {"d_model": 16, "depth": 1, "heads": 2},
            "optim": {"max_steps": 6, "warmup_steps": 1, "batch_size": 8},
            "checkpoint_every": 3,
            "log_every": 3,
        }
        cfg["register"] = {"name": f"{dataset}-encoder", "promote": "champion"}
    uri = f"s3://{bucket}/jobs/{dataset}.yaml"
    fs.pipe(uri[len("s3://") :], yaml.safe_dump(cfg).encode())
    return uri


def wait_job(jobs, job_id: str, timeout_s: float = 240):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = jobs.get_job_status(job_id)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            return status, jobs.get_job_info(job_id), jobs.get_job_logs(job_id)
        time.sleep(1)
    jobs.stop_job(job_id)
    pytest.fail(f"job {job_id} still {status} after {timeout_s} s; logs:\n{jobs.get_job_logs(job_id)[-4000:]}")


def mlflow_run_of(server: str, job_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("neurobridge-ingest")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.ray_job_id = '{job_id}'")
    assert len(runs) == 1, runs
    return client, runs[0]


def test_pipeline_job_submitted_with_the_readme_command_ingests_pretrains_and_registers(
    jobs, stack, bucket, s3_endpoint
):
    fs, name = bucket
    config = pipeline_config(fs, name, "job_nwb", train=True)
    job_id = f"nb-test-{uuid.uuid4().hex[:8]}"
    submit = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            stack.cluster,
            "--submission-id",
            job_id,
            "--no-wait",
            "--working-dir",
            ".",
            "--runtime-env",
            "jobs/runtime_env.yaml",
            "--",
            "python",
            "jobs/pipeline.py",
            "--config",
            config,
        ],
        cwd=REPO,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    status, info, logs = wait_job(jobs, job_id, timeout_s=480)
    assert status == "SUCCEEDED", f"{info.message}\n{logs[-4000:]}"

    # the code came from the job's runtime_env package, in the driver and on a worker
    driver_from = next(line for line in logs.splitlines() if line.startswith("neurobridge "))
    worker_from = next(line for line in logs.splitlines() if "Ray workers import neurobridge from" in line)
    assert PY_MODULES in driver_from and PY_MODULES in worker_from, (driver_from, worker_from)

    # the store on S3: a complete version with every item, and the mixture that pins it
    settings = get_settings(store=f"s3://{name}/store", s3_endpoint=s3_endpoint)
    ref = resolve_dataset(settings, "job_nwb")
    counts = ref.card.counts
    assert (counts.items, counts.items_ok, counts.items_failed) == (4, 4, 0)
    assert ref.path.startswith(f"s3://{name}/store/tokens/job_nwb/")
    mfs, mpath = filesystem(join(ref.path, "_manifest.parquet"), settings)
    with mfs.open(mpath, "rb") as f:
        manifest = pq.read_table(f).to_pylist()
    assert sorted(r["rel"] for r in manifest) == stack.raw and {r["status"] for r in manifest} == {"ok"}
    assert read_mixture(settings, "job_nwb").datasets[0].version == ref.version
    assert f"job_nwb @ {ref.version}: 4/4 items ok" in logs

    # the MLflow server has the ingest run: finished, with the dataset version, the counts and the job id
    client, run = mlflow_run_of(stack.mlflow, job_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset.job_nwb"] == ref.version
    assert run.data.metrics["rows"] == counts.rows and run.data.metrics["items_failed"] == 0
    assert run.data.tags["pipeline"] == "test-job_nwb"
    artifacts = fs.find(f"{name}/mlflow")
    assert any(a.endswith(f"{run.info.run_id}/artifacts/config.json") for a in artifacts), artifacts  # via the server

    # pretrain ran on Ray Train inside the job, on the ingested version; register put its model in the registry
    exp = client.get_experiment_by_name("neurobridge-pretrain")
    (pre,) = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'job-job_nwb'")
    assert pre.info.status == "FINISHED" and pre.data.tags["dataset.job_nwb"] == ref.version
    version = client.get_model_version_by_alias("job_nwb-encoder", "champion")
    assert version.run_id == pre.info.run_id and version.tags["dataset.job_nwb"] == ref.version
    assert any(a.endswith(f"{pre.info.run_id}/artifacts/model/model.pt") for a in fs.find(f"{name}/mlflow"))


def test_job_fails_clearly_when_an_items_worker_dies_on_every_attempt(jobs, stack, bucket, s3_endpoint):
    from ray.job_submission import JobStatus

    fs, name = bucket
    config = pipeline_config(fs, name, "job_nwb_faulty", max_retries=1)
    runtime_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)  # the file's relative paths are relative to the repo root
    runtime_env["py_modules"] = [str(REPO / p) for p in runtime_env["py_modules"]]
    runtime_env["env_vars"] = {"NB_CHAOS": json.dumps({"kill": f"*{VICTIM}", "attempts": "all", "at": "start"})}
    job_id = jobs.submit_job(entrypoint=f"python jobs/pipeline.py --config {config}", runtime_env=runtime_env)
    status, info, logs = wait_job(jobs, job_id)

    assert status == JobStatus.FAILED
    # the Jobs API's message (the log tail) names the stage, the item and why
    assert "exit code 1" in info.message and "FAILED at stage 'ingest'" in info.message
    assert f"item {VICTIM} failed" in info.message and "no result after 2 attempt(s)" in info.message
    assert "retries exhausted" in info.message
    assert logs.count("NB_CHAOS: killing worker") == 2  # two real deaths: the first attempt and the one retry

    settings = get_settings(store=f"s3://{name}/store", s3_endpoint=s3_endpoint)
    card = resolve_dataset(settings, "job_nwb_faulty").card
    assert (card.counts.items_ok, card.counts.items_failed) == (3, 1)  # the rest completed
    assert [f.uri.rsplit("/", 1)[-1] for f in card.failed] == [VICTIM]
    _, run = mlflow_run_of(stack.mlflow, job_id)
    assert run.info.status == "FAILED" and run.data.metrics["items_failed"] == 1
