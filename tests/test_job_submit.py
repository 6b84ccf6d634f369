"""The pipeline job on a real Ray cluster that the test starts (its own ports and temp dir, beside the session's
in-process Ray), submitted exactly as docs/cluster.md says, followed through the Jobs API. The job writes its token
store to S3 (moto's server) and tracks its ingest in a real `mlflow server` whose artifacts go to S3 as well.

Authentication is Ray's default, set up as docs/cluster.md says: `ray get-auth-token --generate` writes the token to
~/.ray/auth_token of the user (here a home folder of the test's own, so the real one is never touched), and
`ray start --head`, with no RAY_AUTH_MODE, finds it and turns token authentication on. The `ray job submit` client
does what a user does: RAY_AUTH_MODE=token with the same home; the SDK client sends the token from that file as
its Authorization header.

The cluster's environment carries the locations (NB_STORE, NB_RAW, NB_S3_ENDPOINT, NB_MLFLOW_URI), as cluster.yaml
exports them on every node; the code reaches the workers only through jobs/runtime_env.yaml (py_modules), which
the job proves by printing where its driver and a worker imported neurobridge from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
import yaml
from helpers.cluster import BIN, start_mlflow, start_ray_head, stop, wait_http
from helpers.sim import small_sim
from neurobridge.config import get_settings
from neurobridge.sim import simulate
from neurobridge.storage import filesystem, join
from neurobridge.store.mixtures import read_mixture
from neurobridge.store.versions import resolve_dataset

pytestmark = pytest.mark.slow  # a cluster, an MLflow server and two jobs: ~90 s on an idle 2-core machine

REPO = Path(__file__).resolve().parents[1]
VICTIM = "sub-monkey01_ses-s00.nwb"
PY_MODULES = "runtime_resources/py_modules_files/"


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    name = f"nb-job-{uuid.uuid4().hex[:8]}"
    fs.mkdir(name)
    return fs, name


@dataclass
class Stack:
    cluster: str  # dashboard URL: the Jobs API
    mlflow: str
    raw: list[str]  # item names of the simulated sessions in s3://bucket/raw/sim/nwb
    home: Path  # the home of the user who started the head: ray start wrote .ray/auth_token there

    @property
    def token(self) -> str:
        return (self.home / ".ray" / "auth_token").read_text().strip()

    def client_env(self) -> dict[str, str]:
        """A `ray job submit` user's environment on the head's machine: the docs' one auth step, RAY_AUTH_MODE=token
        (the token itself comes from ~/.ray/auth_token)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        return {**env, "HOME": str(self.home), "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def stack(bucket, s3_endpoint, tmp_path_factory):
    """MLflow server and Ray head start together (each takes tens of seconds here) while the raw data is written."""
    fs, name = bucket
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    home = tmp_path_factory.mktemp("services")
    user_home = tmp_path_factory.mktemp("user_home")  # whoever starts the head gets the token in ~/.ray
    temp = tempfile.mkdtemp(prefix="nbray", dir="/tmp")  # short: Ray's unix socket paths live below it
    mlflow, mlflow_url, mlflow_log = start_mlflow(name, {**aws, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}, home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NB_", "RAY_ADDRESS", "RAY_AUTH"))}
    env.update(
        {
            **aws,
            "HOME": str(user_home),  # Ray's default authentication: token on, written to $HOME/.ray/auth_token
            "PATH": f"{BIN}{os.pathsep}{env['PATH']}",  # the job's `python` is the first on the head's PATH
            # the locations, as cluster.yaml exports them on every node before `ray start`
            "NB_STORE": f"s3://{name}/store",
            "NB_RAW": f"s3://{name}/raw",
            "NB_S3_ENDPOINT": s3_endpoint,
            "NB_MLFLOW_URI": mlflow_url,
        }
    )
    # the docs' first step: a token in ~/.ray/auth_token, which `ray start --head` then enforces
    made = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True, text=True)
    assert made.returncode == 0 and (user_home / ".ray" / "auth_token").exists(), made.stderr
    head, url, head_log = start_ray_head(env, temp)
    try:
        out = home / "sim"
        simulate(str(out), small_sim(nwb=(2, 2), write_truth=False), progress=False)
        fs.put(str(out / "nwb"), f"{name}/raw/sim/nwb", recursive=True)
        wait_http(f"{mlflow_url}/health", mlflow, mlflow_log, 180)
        wait_http(f"{url}/api/version", head, head_log, 180)
        yield Stack(url, mlflow_url, sorted(p.name for p in (out / "nwb").glob("*.nwb")), user_home)
    finally:
        stop(head)
        stop(mlflow)
        shutil.rmtree(temp, ignore_errors=True)
        head_log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def jobs(stack):
    """The Jobs SDK as a user on another machine uses it: the cluster's token as the Authorization header (this
    process's own Ray settings are the session's local cluster, so nothing is taken from them)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(stack.cluster, headers={"Authorization": f"Bearer {stack.token}"})


def test_the_jobs_api_refuses_a_client_without_the_token(stack):
    """What a user saw before the docs said so: `ray job submit` without the auth step fails at once."""
    env = {k: v for k, v in stack.client_env().items() if k != "RAY_AUTH_MODE"}
    env["HOME"] = str(stack.home.parent)  # a user with no token file
    out = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", stack.cluster],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "authentication" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr


def pipeline_config(fs, bucket: str, dataset: str, train: bool = False, **ingest) -> str:
    """A pipeline config in S3: the job reads it from there (any fsspec URI works for --config). ``train``: also
    pretrain on Ray Train (a few steps) and register the model in the MLflow server's registry."""
    entry = {"name": dataset, "kind": "nwb", "uri": "sim/nwb", "ingest": {"window": {"mode": "chunks"}}}
    cfg = {
        "name": f"test-{dataset}",
        "stages": ["ingest", "pretrain", "evaluate", "register"] if train else ["ingest"],
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


def test_pipeline_job_submitted_with_the_documented_command_ingests_pretrains_evaluates_and_registers(
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
        env=stack.client_env(),
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

    # pretrain ran on Ray Train inside the job, on the ingested version, which is its MLflow dataset input; its model
    # is the run's logged model; the evaluate stage wrote co-bps beside the smoothing baseline into the same run
    exp = client.get_experiment_by_name("neurobridge-pretrain")
    (pre,) = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'job-job_nwb'")
    assert pre.info.status == "FINISHED" and pre.data.tags["dataset.job_nwb"] == ref.version
    (used,) = pre.inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.digest) == ("job_nwb", ref.version)
    assert json.loads(used.dataset.source)["uri"] == ref.path
    (out,) = pre.outputs.model_outputs
    assert client.get_logged_model(out.model_id).status == "READY"
    metrics = pre.data.metrics
    assert {"loss", "eval.job_nwb.co_bps", "eval.job_nwb.co_bps_smoothing"} <= set(metrics)
    assert any(k.startswith("system/") for k in metrics)  # rank 0 recorded system metrics
    assert exp.tags["mlflow.note.content"].startswith("Masked pretraining")
    assert any(a.endswith(f"{pre.info.run_id}/artifacts/model/model.pt") for a in fs.find(f"{name}/mlflow"))

    # register: a version with the evaluation on it; @champion only if the gate passed it (six steps never do)
    (version,) = client.search_model_versions("name='job_nwb-encoder'")
    assert version.run_id == pre.info.run_id and version.tags["dataset.job_nwb"] == ref.version
    passed = metrics["eval.job_nwb.co_bps"] >= metrics["eval.job_nwb.co_bps_smoothing"]
    assert version.tags["evaluation"] == ("passed" if passed else "below baseline")
    aliases = client.get_registered_model("job_nwb-encoder").aliases
    assert ("champion" in aliases) == passed and aliases["candidate"] == version.version
    if not passed:
        assert "models:/job_nwb-encoder/1 is not promoted to @champion: below baseline: job_nwb: co-bps" in logs


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


def test_a_job_without_lasting_locations_refuses_to_start_and_names_the_settings(jobs, stack, bucket):
    """No NB_* on the cluster: the store and MLflow DB would land in Ray's temporary copy of the working dir."""
    from ray.job_submission import JobStatus

    fs, name = bucket
    config = pipeline_config(fs, name, "job_nowhere")
    runtime_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    runtime_env["py_modules"] = [str(REPO / p) for p in runtime_env["py_modules"]]
    runtime_env["env_vars"] = {"NB_STORE": "", "NB_MLFLOW_URI": "", "NB_HOME": ""}  # as on a cluster without them
    job_id = jobs.submit_job(entrypoint=f"python jobs/pipeline.py --config {config}", runtime_env=runtime_env)
    status, info, logs = wait_job(jobs, job_id, timeout_s=180)
    assert status == JobStatus.FAILED and "exit code 2" in info.message, logs[-3000:]
    message = " ".join(info.message.split())
    assert "inside Ray's temporary session directory" in message and "Set NB_STORE" in message
    assert "NB_MLFLOW_URI (now sqlite:///" in message and "runtime_resources" in message
    assert "pipeline 'test-job_nowhere': stages" not in logs  # refused before any stage
