"""workflows/pipeline: pipeline configs (`jobs/pipeline.py --config`) are strict, refused before anything runs on an
unknown stage, a missing section or a misspelt key; shipped configs are valid; the simulate and register stages run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from helpers.registry import passing_run
from neurobridge.tracking import registry
from neurobridge.workflows.pipeline import STAGES, PipelineError, load_pipeline, run_pipeline


def write(tmp_path, cfg: dict) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipeline_configs_are_valid(path):  # jobs/pipelines/: pipeline configs only (stage configs elsewhere)
    cfg = load_pipeline(str(path))
    assert cfg.stages and all(s in STAGES for s in cfg.stages)


def test_an_unknown_stage_is_refused_with_the_nearest_name(tmp_path):
    path = write(tmp_path, {"stages": ["ingset"], "ingest": {"catalog": ["demo"]}})
    with pytest.raises(
        PipelineError, match=r"pipeline.yaml: field 'stages': unknown stage 'ingset'; did you mean 'ingest'"
    ):
        load_pipeline(path)


def test_a_listed_stage_needs_its_section_and_keys_are_checked(tmp_path):
    with pytest.raises(PipelineError, match="stage 'ingest' is listed in `stages` but there is no `ingest:` section"):
        load_pipeline(write(tmp_path, {"stages": ["ingest"]}))
    with pytest.raises(PipelineError, match="unknown field 'ingest.max_retry'; did you mean 'max_retries'"):
        load_pipeline(write(tmp_path, {"stages": ["ingest"], "ingest": {"catalog": ["demo"], "max_retry": 2}}))
    with pytest.raises(PipelineError, match="stage\\(s\\) listed twice: ingest"):
        load_pipeline(write(tmp_path, {"stages": ["ingest", "ingest"], "ingest": {"catalog": ["demo"]}}))
    with pytest.raises(PipelineError, match="name catalog refs"):
        load_pipeline(write(tmp_path, {"stages": ["ingest"], "ingest": {"mixture": "x"}}))


def test_stages_given_on_the_command_line_replace_the_configs_list(tmp_path):
    path = write(tmp_path, {"stages": ["simulate", "ingest"], "ingest": {"catalog": ["demo"]}})
    assert load_pipeline(path, ["ingest"]).stages == ["ingest"]


def test_the_config_names_the_locations_and_the_simulate_stage_writes_there(tmp_path, monkeypatch):
    monkeypatch.setenv("NB_RAW", str(tmp_path / "not-here"))  # the config wins; restored after the test
    raw = tmp_path / "elsewhere"
    sim = {
        "nwb_subjects": 1,
        "nwb_sessions_per_subject": 1,
        "alf_subjects": 0,
        "visual_sessions": 0,
        "units_min": 5,
        "units_max": 6,
        "minutes": 0.2,
        "write_images": False,
        "write_truth": False,
    }
    cfg = load_pipeline(write(tmp_path, {"stages": ["simulate"], "settings": {"raw_root": str(raw)}, "simulate": sim}))
    lines: list[str] = []
    assert run_pipeline(cfg, echo=lines.append) == 0
    assert sorted(p.name for p in (raw / "sim" / "nwb").glob("*.nwb")) == ["sub-monkey00_ses-s00.nwb"]
    assert os.environ["NB_RAW"] == str(raw)  # library code in this driver that reads the settings agrees
    assert lines[-1].startswith("pipeline result:")


def test_the_job_script_exits_2_with_the_reason_on_a_bad_config(tmp_path):
    path = write(tmp_path, {"stages": ["ingest", "align"], "ingest": {"catalog": ["demo"]}})
    out = subprocess.run(
        [sys.executable, "jobs/pipeline.py", "--config", path],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "platform")},
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "stage 'align' is listed in `stages` but there is no `align:` section" in out.stderr


def test_align_taking_the_pretrain_stages_model_needs_that_stage_first(tmp_path, monkeypatch):
    monkeypatch.setenv("NB_STORE", str(tmp_path / "store"))  # restored after the test (run_pipeline sets it)
    align = {
        "data": {
            "datasets": ["sim_visual"],
            "embeddings": {"simulation": "sim"},
            "encoder": {"checkpoint": "pretrain", "train": "last_layers"},
        }
    }
    cfg = load_pipeline(write(tmp_path, {"stages": ["align"], "align": align}))
    lines = []
    assert run_pipeline(cfg, echo=lines.append) == 1
    assert any("encoder.checkpoint is 'pretrain' but no pretrain stage ran before it" in line for line in lines)


@pytest.fixture(scope="module")
def store(registry_store):
    """This file's store: two simulated reaching sessions ingested as r_nwb, with MLflow (conftest)."""
    return registry_store


def test_the_pipeline_register_stage_registers_and_promotes(store, registered, monkeypatch):
    from neurobridge.config import ENV_VARS
    from neurobridge.workflows.pipeline import PipelineConfig, run_pipeline

    for key in ("store", "mlflow_uri"):  # run_pipeline exports its settings; restore them after the test
        monkeypatch.setenv(ENV_VARS[key], getattr(store, key))
    run_id = passing_run(store, "reg-pipe")
    cfg = PipelineConfig(
        stages=["register"],
        settings={"store": store.store, "mlflow_uri": store.mlflow_uri},
        register={"run": run_id, "name": "pipe", "promote": "champion"},
    )
    lines: list[str] = []
    assert run_pipeline(cfg, echo=lines.append) == 0, lines
    champ = registry.resolve("models:/pipe@champion", store)
    assert champ.run_id == run_id and champ.aliases == ["candidate", "champion"]
    unevaluated, _ = registered  # the gate refuses; the stage still succeeds and says why
    cfg = cfg.model_copy(update={"register_stage": cfg.register_stage.model_copy(update={"run": unevaluated})})
    assert run_pipeline(cfg, echo=lines.append) == 0, lines
    assert "not promoted" in next(x for x in lines if x.startswith("register: models:/pipe/2"))
    assert registry.resolve("models:/pipe@champion", store).version == "1"
    no_run = PipelineConfig(stages=["register"], settings={"store": store.store, "mlflow_uri": store.mlflow_uri})
    assert run_pipeline(no_run, echo=lines.append) == 1 and "no run to register" in lines[-1]
