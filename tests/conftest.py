"""Real components, started by the tests: one local Ray per session, a moto S3 server over HTTP, temp stores; and
the simulated stores that several test files share, each built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Workers inherit the driver's environment when Ray starts: set dummy S3 credentials before anything else.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NB_SHARED_DATA", REPO.parent / "shared" / "data"))
MC_MAZE = SHARED_DATA / "nlb_mc_maze_medium" / "sub-Jenkins_ses-medium_desc-test_ecephys.nwb"
IBL_EXCERPT = SHARED_DATA / "ibl_spikes_excerpt"
needs_real_data = pytest.mark.skipif(not MC_MAZE.exists(), reason="shared real-data excerpts not present")

# Builders shared by several test files live in tests/helpers/; their asserts report like the tests' own.
pytest.register_assert_rewrite("helpers")


# Tests that start Ray, a Ray job, a moto server or a pipeline run end to end are "slow" (seconds to minutes each);
# everything else is a unit test, and `pytest -m "not slow"` runs those alone in under a minute.
SLOW_FIXTURES = {"ray_cluster", "reaching_store", "s3_endpoint"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def ingest_here(entry, settings):
    """Ingest one entry without Ray: the same per-item code (``process_item``) and commit as a Ray run, one item
    after another in this process, so tests of what a version holds need no cluster."""
    from neurobridge.ingest.item import process_item
    from neurobridge.ingest.plan import commit, plan_entry

    plan = plan_entry(entry, entry.settings_for(settings))
    return commit(plan, [process_item(entry, item, plan.vdir, plan.settings) for item in plan.todo])


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (start-up is ~10 s here)."""
    import ray
    import ray.data

    # 4 logical CPUs on a 2-core CI machine: a Ray Train worker holding one must not starve Ray Data (STACK_NOTES)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.verbose_progress = False
    ctx.execution_no_progress_timeout_s = 120  # a stall fails the test instead of hanging CI
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def reaching_store(tmp_path_factory, ray_cluster):
    """Factory: simulate reaching (NWB) and IBL-like (ALF) sessions, ingest them through Ray as ``t_nwb`` and
    ``t_alf``, pin them as ``mixture``; returns the settings of that store."""

    def make(name: str, mixture: str, units: tuple[int, int], minutes: float):
        from helpers.sim import small_sim
        from neurobridge.catalog import CatalogEntry
        from neurobridge.config import get_settings
        from neurobridge.ingest.pipeline import ingest_many
        from neurobridge.sim import simulate
        from neurobridge.store.mixtures import write_mixture

        root = tmp_path_factory.mktemp(name)
        sim = root / "raw"
        cfg = small_sim(nwb=(1, 2), alf=(1, 1), units_min=units[0], units_max=units[1], minutes=minutes)
        simulate(str(sim), cfg, progress=False)
        settings = get_settings(store=str(root / "store"), raw_root=str(sim), mlflow_uri=f"sqlite:///{root}/mlflow.db")
        entries = [
            CatalogEntry.of(
                name="t_nwb",
                kind="nwb",
                uri=str(sim / "nwb"),
                ingest={"bin_ms": 20, "window": {"mode": "chunks", "chunk_s": 0.6}},
            ),
            CatalogEntry.of(
                name="t_alf",
                kind="alf",
                uri=str(sim / "alf"),
                one={"mode": "local"},
                ingest={"bin_ms": 20, "window": {"mode": "chunks", "chunk_s": 1.6}},
            ),
        ]
        reports = ingest_many(entries, settings, progress=False)
        assert not any(isinstance(r, Exception) for r in reports), reports
        write_mixture(settings, mixture, reports)
        return settings

    return make


@pytest.fixture()
def settings(tmp_path):
    from neurobridge.config import get_settings

    return get_settings(store=str(tmp_path / "store"), raw_root=str(tmp_path / "raw"))


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's threaded S3 server: a real HTTP endpoint that s3fs, pyarrow and Ray workers all talk to."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def copy_shared(tmp_path):
    """Copy a real excerpt into a writable temp dir (the originals are read-only and never modified)."""

    def _copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / "raw" / (name or src.name)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
            dst.chmod(0o644)
        return dst

    return _copy


# ---------------------------------------------------------------------------------------------------------------
# Stores several test files share: built once per session, on first use.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pretrain_store(reaching_store):
    """Two simulated reaching sessions and one decision session, ingested and pinned as mixture 'tiny' (training,
    evaluation and store-reading tests)."""
    return reaching_store("pretrain", "tiny", units=(20, 30), minutes=0.75)


@pytest.fixture(scope="session")
def ablation_store(reaching_store):
    """Two simulated reaching sessions and one IBL-like session, ingested and pinned as mixture 'demo' (tune tests)."""
    return reaching_store("ablate", "demo", units=(16, 24), minutes=0.5)


@pytest.fixture(scope="session")
def align_store(ray_cluster, tmp_path_factory):
    """Two simulated V1/V4/IT sessions ingested through Ray: IT carries the embedding most (the simulator's
    default, gain rising along the hierarchy), and the reverse (V1 most), written with another split salt."""
    from helpers.align import simulate_visual, visual_entry
    from neurobridge.config import get_settings
    from neurobridge.ingest.pipeline import ingest

    base = tmp_path_factory.mktemp("align")
    st_ = get_settings(
        store=str(base / "store"), raw_root=str(base / "raw"), mlflow_uri=f"sqlite:///{base / 'mlflow.db'}"
    )
    simulate_visual(base / "it", 500, 5, (0.7, 1.5))
    simulate_visual(base / "v1", 200, 4, (1.5, 0.4))
    for name, root, salt in (("vis_it", base / "it", "neurobridge"), ("vis_v1", base / "v1", "other")):
        report = ingest(visual_entry(name, root, salt), st_, progress=False)
        assert report.ok
    return {"settings": st_, "it": base / "it", "v1": base / "v1"}


@pytest.fixture(scope="session")
def visual(ray_cluster, tmp_path_factory):
    """One simulated V1/V4/IT session (IT carries the embedding most), ingested; a small masked model checkpoint
    whose vocabularies know the session (the 'pretrained' encoder)."""
    import torch
    from helpers.align import N_IMAGES, REPEATS, simulate_visual, visual_entry
    from neurobridge.config import get_settings
    from neurobridge.ingest.pipeline import ingest
    from neurobridge.models.checkpoint import save_checkpoint
    from neurobridge.models.config import ModelConfig
    from neurobridge.models.ndt import MaskedNeuralModel
    from neurobridge.models.vocab import Vocabularies

    base = tmp_path_factory.mktemp("align_train")
    st_ = get_settings(
        store=str(base / "store"), raw_root=str(base / "raw"), mlflow_uri=f"sqlite:///{base / 'mlflow.db'}"
    )
    simulate_visual(base / "sim", N_IMAGES, REPEATS, (0.7, 1.5))
    assert ingest(visual_entry("vis", base / "sim"), st_, progress=False).ok
    vocabs = Vocabularies()
    vocabs.session.add(["vismouse00_s00"])
    vocabs.subject.add(["vismouse00"])
    vocabs.region.add(["V1", "V4", "IT"])
    vocabs.dataset.add(["vis"])
    torch.manual_seed(123)  # not the scratch seed: a 'pretrained' encoder is never the fresh init
    model = MaskedNeuralModel(ModelConfig(neurons_per_token=4, d_model=16, depth=2, heads=2), vocabs)
    save_checkpoint(str(base / "model.pt"), model, vocabs)
    return {"settings": st_, "sim": base / "sim", "model": base / "model.pt"}


@pytest.fixture(scope="session")
def registry_store(tmp_path_factory, ray_cluster):
    """Two simulated reaching sessions ingested as ``r_nwb``, with an MLflow store (registry and inference tests)."""
    from helpers.sim import small_sim
    from neurobridge.catalog import CatalogEntry
    from neurobridge.config import get_settings
    from neurobridge.ingest.pipeline import ingest_many
    from neurobridge.sim import simulate

    root = tmp_path_factory.mktemp("registry")
    sim = root / "raw"
    simulate(str(sim), small_sim(nwb=(1, 2)), progress=False)
    settings = get_settings(store=str(root / "store"), raw_root=str(sim), mlflow_uri=f"sqlite:///{root}/mlflow.db")
    entry = CatalogEntry.of(
        name="r_nwb",
        kind="nwb",
        uri=str(sim / "nwb"),
        ingest={"bin_ms": 20, "window": {"mode": "chunks", "chunk_s": 0.6}},
    )
    (report,) = ingest_many([entry], settings, progress=False)
    assert not isinstance(report, Exception), report
    return settings


@pytest.fixture(scope="session")
def registered(registry_store):
    """A finished pretrain run registered as model ``encoder`` (version 1, alias ``candidate``): (run id, info)."""
    from helpers.registry import pretrain_run
    from neurobridge.inference import registrable

    run_id = pretrain_run(registry_store, "reg-a")
    info = registrable.register(run_id, "encoder", settings=registry_store)
    return run_id, info


@pytest.fixture(scope="session")
def mixed_sim(tmp_path_factory):
    """A small simulation with one NWB and one ALF session (the multi-entry catalog of ``helpers.ingest.entries``)."""
    from helpers.sim import small_sim
    from neurobridge.sim import simulate

    out = tmp_path_factory.mktemp("mixed")
    simulate(str(out), small_sim(nwb=(1, 1), alf=(1, 1)), progress=False)
    return out


@pytest.fixture()
def one_torch_thread():
    """Small MLPs: one thread is fastest, and spinning OpenMP threads only slow a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
