"""cluster.yaml checked offline against the cluster-launcher schema that ships with the installed Ray.

The same two calls Ray's own tests use: ``prepare_config`` (merge with the provider's defaults, fill per-type
min/max workers) then ``validate_config`` (JSON schema + cross-field checks). No network, no boto3 calls.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
INGEST_TYPE = "ingest_cpu"
GPU_TYPE = "train_gpu"


@pytest.fixture(scope="module")
def raw_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def prepared(config: dict) -> dict:
    """Prepare and validate a copy, as `ray up` does before it touches the cloud."""
    out = prepare_config(copy.deepcopy(config))
    validate_config(out)
    return out


@pytest.fixture(scope="module")
def config(raw_config) -> dict:
    return prepared(raw_config)


def worker_types(config: dict) -> dict[str, dict]:
    head = config["head_node_type"]
    return {name: t for name, t in config["available_node_types"].items() if name != head}


def test_cluster_yaml_passes_ray_schema(config):
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]
    assert set(worker_types(config)) == {INGEST_TYPE, GPU_TYPE}


@pytest.mark.parametrize("where", ["top", "node_type", "docker"])
def test_misspelt_field_is_rejected(raw_config, where):
    broken = copy.deepcopy(raw_config)
    if where == "top":
        broken["max_worker"] = broken.pop("max_workers")
    elif where == "node_type":
        node = broken["available_node_types"][INGEST_TYPE]
        node["max_worker"] = node.pop("max_workers")
    else:
        broken["docker"]["imagee"] = broken["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError, match="max_worker|imagee"):
        prepared(broken)


def test_min_workers_above_global_max_is_rejected(raw_config):
    broken = copy.deepcopy(raw_config)
    broken["available_node_types"][INGEST_TYPE]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        prepared(broken)


def test_ingest_type_is_cpu_only_with_ingest_resource(config):
    res = config["available_node_types"][INGEST_TYPE]["resources"]
    assert res.get("CPU", 0) > 0
    assert res.get("ingest", 0) > 0
    assert res.get("GPU", 0) == 0


def test_gpu_type_has_gpus_and_gpu_image(config):
    node = config["available_node_types"][GPU_TYPE]
    assert node["resources"].get("GPU", 0) > 0
    assert node["resources"].get("ingest", 0) == 0
    image = node.get("docker", {}).get("worker_image", config["docker"].get("worker_image"))
    assert re.search(r"-(gpu|cu\d+)$", image), image


def test_head_schedules_no_work(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["max_workers"] == 0


def test_worker_counts_are_consistent(config):
    types = worker_types(config)
    for name, t in types.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
        assert t["max_workers"] > 0, f"{name} can never start"
    assert config["max_workers"] >= sum(t["min_workers"] for t in types.values())
    assert config["max_workers"] >= max(t["max_workers"] for t in types.values())
    assert 0 < config["idle_timeout_minutes"] <= 60


def test_images_match_installed_ray(config):
    images = [config["docker"][k] for k in ("image", "head_image", "worker_image") if k in config["docker"]]
    images += [t["docker"]["worker_image"] for t in worker_types(config).values() if "docker" in t]
    assert images
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray.__version__}-py311-"), image


def setup_of(config: dict, node_type: str) -> list[str]:
    """The setup commands `ray up` runs on a node of this type (a type's own list replaces the global ones)."""
    if node_type == config["head_node_type"]:
        return config["setup_commands"] + config["head_setup_commands"]
    own = config["available_node_types"][node_type].get("worker_setup_commands")
    return own if own is not None else config["setup_commands"] + config["worker_setup_commands"]


@pytest.mark.parametrize("node_type", ["head", INGEST_TYPE, GPU_TYPE])
def test_every_node_type_installs_pinned_torch_then_the_project(config, node_type):
    pin = re.search(r'"(torch==[^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins torch"
    cmds = setup_of(config, node_type)
    torch_at = next(i for i, c in enumerate(cmds) if pin.group(1) in c)
    project_at = next(i for i, c in enumerate(cmds) if "~/neurobridge" in c and "pip install" in c)
    assert torch_at < project_at  # else pip resolves torch itself (the CUDA wheel, GBs) while installing the project
    cpu_wheel = "download.pytorch.org/whl/cpu" in cmds[torch_at]
    has_gpu = config["available_node_types"][node_type]["resources"].get("GPU", 0) > 0
    assert cpu_wheel != has_gpu, cmds[torch_at]
    assert "~/neurobridge" in config["file_mounts"]
    assert config["head_start_ray_commands"] and config["worker_start_ray_commands"]


def test_nodes_use_instance_profiles_and_no_secrets(config):
    for name, t in config["available_node_types"].items():
        assert "IamInstanceProfile" in t["node_config"], name
    text = CLUSTER_YAML.read_text().lower()
    for secret in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "ssh_private_key"):
        assert secret not in text


# --- what the jobs rely on ---------------------------------------------------------------------------------------


def cluster_jobs() -> list:
    from neurobridge.workflows.pipeline import load_pipeline

    jobs = [load_pipeline(str(p)) for p in sorted((REPO / "jobs" / "pipelines").glob("aws*.yaml"))]
    assert jobs, "jobs/pipelines/aws*.yaml: the cluster's pipeline configs"
    return jobs


def test_resources_the_jobs_ask_for_exist_only_on_the_ingest_type(config):
    jobs = cluster_jobs()
    asked = {name for job in jobs if job.ingest for name in job.ingest.resources}
    assert asked == {"ingest"}, asked
    types = worker_types(config)
    for name in asked:
        having = [t for t, node in types.items() if node["resources"].get(name, 0) >= 1]
        assert having == [INGEST_TYPE], (name, having)  # so ingest demand scales ingest nodes, never GPU nodes
        for job in jobs:
            assert 0 < job.ingest.resources[name] <= 1 / types[INGEST_TYPE]["resources"]["CPU"]  # CPUs stay the limit


def test_ingest_concurrency_of_the_cluster_job_fills_the_ingest_fleet(config):
    """The fleet starts empty, so the job must say how many items may be in flight (the default would be 1)."""
    node = config["available_node_types"][INGEST_TYPE]
    fleet = node["max_workers"] * node["resources"]["CPU"]
    for job in cluster_jobs():
        assert job.ingest.workers is not None and node["resources"]["CPU"] < job.ingest.workers <= fleet


def test_every_node_knows_the_store_and_the_mlflow_server_on_the_head(config):
    env = [o for o in config["docker"]["run_options"] if o.startswith("--env NB_STORE=")]
    assert len(env) == 1 and env[0].split("=", 1)[1].startswith("s3://")
    head_start = " ".join(config["head_start_ray_commands"])
    server = re.search(r"mlflow server .*--port (\d+)", head_start)
    assert server and "--artifacts-destination $NB_STORE/" in head_start
    port = server.group(1)
    assert head_start.index("mlflow server") < head_start.index("ray start --head")
    assert f"export NB_MLFLOW_URI=http://localhost:{port};" in head_start.split("ray start --head")[0]
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert f"export NB_MLFLOW_URI=http://$RAY_HEAD_IP:{port};" in worker_start.split("ray start")[-2]


def test_every_node_runs_with_the_one_cluster_token(config):
    """Ray 2.60's token authentication: head and workers share the token shipped from the launching machine (a
    worker without it could not join), and start with RAY_AUTH_MODE=token."""
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(config[key])
        assert "export RAY_AUTH_MODE=token;" in start.split("ray start")[-2], key
    assert "ray get-auth-token --generate" in (REPO / "cluster.yaml").read_text()


def test_runtime_env_ships_the_package_as_py_modules():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert env["working_dir"] == "."
    assert [(REPO / m / "__init__.py").is_file() and Path(m).name == "neurobridge" for m in env["py_modules"]] == [True]
    assert not (REPO / "platform" / "__init__.py").exists()  # platform/ must never shadow the stdlib module
