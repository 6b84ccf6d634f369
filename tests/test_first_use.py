"""What a new user trips over first, each held: locations that would vanish with a Ray session, the commit recorded
from outside the checkout, an invalid catalog file that must not block unrelated entries, help for every command
and option, a misspelt --set key named as such, ingest's closing lines, IBL's public login, and a source that
cannot be reached failing alone."""

from __future__ import annotations

import socket
import subprocess

import pytest
import typer.main
from conftest import REPO
from neurobridge.catalog import CatalogError, resolve
from neurobridge.cli import app
from neurobridge.config import SettingsError, code_commit, get_settings, refuse_ephemeral
from typer.testing import CliRunner

# ------------------------------------------------------------------------------------------- Ray job locations


@pytest.fixture()
def job_dir(tmp_path, monkeypatch):
    """A current directory where Ray puts a job's working_dir copy: <temp>/session_<…>/runtime_resources/…."""
    d = tmp_path / "ray" / "session_2026-12-04_10-00-00_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    d.mkdir(parents=True)
    for var in ("NB_HOME", "NB_STORE", "NB_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(d)
    return d


def test_a_job_without_locations_refuses_to_write_into_rays_session_dir(job_dir):
    with pytest.raises(SettingsError) as err:
        get_settings()
    msg = str(err.value)
    assert "NB_STORE (now " in msg and "NB_MLFLOW_URI (now sqlite:///" in msg and "session_2026" in msg
    assert "deleted with the session" in msg and "NB_HOME" in msg and "runtime_env env_vars" in msg


def test_a_relative_nb_home_is_refused_too_and_lasting_locations_pass(job_dir, monkeypatch):
    monkeypatch.setenv("NB_HOME", ".neurobridge")
    with pytest.raises(SettingsError, match="NB_STORE"):
        get_settings()
    monkeypatch.setenv("NB_STORE", "s3://lab-tokens/store")
    with pytest.raises(SettingsError, match="NB_MLFLOW_URI") as err:
        get_settings()
    assert "NB_STORE (now" not in str(err.value)  # only what is still wrong is named
    monkeypatch.setenv("NB_MLFLOW_URI", "http://head:5000")
    assert get_settings().store == "s3://lab-tokens/store"
    monkeypatch.delenv("NB_STORE")
    monkeypatch.delenv("NB_MLFLOW_URI")
    monkeypatch.setenv("NB_HOME", str(job_dir.parents[4] / "lasting"))  # absolute, outside the session
    assert get_settings().store.endswith("lasting/store")


def test_outside_a_ray_job_nothing_is_refused(tmp_path):
    refuse_ephemeral(get_settings(store="rel/store", mlflow_uri="sqlite:///rel/m.db"), cwd=tmp_path)


def test_the_commit_is_the_checkouts_wherever_the_command_runs(tmp_path, monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(tmp_path)  # not a git repository
    code_commit.cache_clear()
    try:
        assert code_commit() == head
        monkeypatch.setenv("NB_GIT_COMMIT", "abc123")  # code shipped without its repository (a Ray job)
        code_commit.cache_clear()
        assert code_commit() == "abc123"
    finally:
        code_commit.cache_clear()


# ------------------------------------------------------------------------------------------- catalog and CLI


def test_an_invalid_catalog_file_does_not_block_other_entries(tmp_path):
    (tmp_path / "good.yaml").write_text("name: fine\nkind: nwb\nuri: data\n")
    (tmp_path / "broken.yaml").write_text("name: bad\nkind: zarr\nuri: d\n")
    assert [e.name for e in resolve("fine", tmp_path)] == ["fine"]
    with pytest.raises(CatalogError) as err:  # a name that is nowhere: the unreadable file is named as a suspect
        resolve("missing", tmp_path)
    assert "could not be read" in str(err.value) and "unknown kind 'zarr'" in str(err.value)
    (tmp_path / "twice.yaml").write_text("name: fine\nkind: nwb\nuri: other\n")
    with pytest.raises(CatalogError, match="entry name 'fine' also in"):
        resolve("fine", tmp_path)


def _commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), cmd


def test_every_command_and_option_has_help_text():
    missing = []
    for name, cmd in _commands(typer.main.get_command(app)):
        if not (cmd.help or "").strip():
            missing.append(f"{name}: no command help")
        missing += [f"{name} --{p.name}" for p in cmd.params if p.name != "help" and not (p.help or "").strip()]
    assert not missing, missing


def test_a_misspelt_set_key_is_named_as_the_override_it_is(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--set", "optim.max_stepz=3"])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "override 'optim.max_stepz' (--set): no key 'max_stepz' under 'optim'; did you mean 'max_steps'?" in out
    assert "defaults" not in out
    align = CliRunner().invoke(
        app, ["align", "-c", str(REPO / "jobs/configs/align_demo.yaml"), "--set", "projektor.epochs=2"]
    )
    assert align.exit_code == 2 and "no key 'projektor' at the top level; did you mean 'projector'?" in " ".join(
        align.output.split()
    )


def test_an_entry_whose_source_is_missing_ends_without_pointing_at_a_manifest(tmp_path, monkeypatch):
    cat = tmp_path / "missing.yaml"
    cat.write_text(f"name: gone\nkind: nwb\nuri: {tmp_path / 'nowhere'}\n")
    monkeypatch.setenv("NB_STORE", str(tmp_path / "store"))
    result = CliRunner().invoke(app, ["ingest", str(cat), "--no-progress"])
    out = " ".join(result.output.split())
    assert result.exit_code == 1 and "1 catalog entry not ingested (gone)" in out
    assert "no version or manifest was written" in out and "_manifest.parquet" not in out
    assert not (tmp_path / "store").exists()


# ------------------------------------------------------------------------------------------- IBL through ONE


def test_the_public_ibl_database_is_read_with_its_documented_public_login(monkeypatch):
    from neurobridge.sources.io.ibl_one import credentials

    for var in ("NB_ONE_USERNAME", "NB_ONE_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert credentials("https://openalyx.internationalbrainlab.org") == ("intbrainlab", "international")
    assert credentials("https://alyx.example.org") == (None, None)  # another server: ONE's own stored login
    assert credentials("https://openalyx.internationalbrainlab.org", "me") == ("me", None)  # not the public password
    monkeypatch.setenv("NB_ONE_USERNAME", "lab-user")
    monkeypatch.setenv("NB_ONE_PASSWORD", "s3cret")
    assert credentials("https://alyx.example.org", "ignored") == ("lab-user", "s3cret")


def test_an_alyx_server_that_cannot_be_reached_is_this_entrys_error_without_the_password(tmp_path, monkeypatch):
    from neurobridge.catalog import CatalogEntry
    from neurobridge.sources import SourceError, discover

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # ONE keeps its login parameters under ~/.one
    monkeypatch.setenv("NB_ONE_USERNAME", "lab-user")
    monkeypatch.setenv("NB_ONE_PASSWORD", "s3cret-pw")
    entry = CatalogEntry.of(
        name="ibl_down",
        kind="alf",
        uri=str(tmp_path / "cache"),
        one={"mode": "remote", "base_url": f"http://127.0.0.1:{port}"},
    )
    with pytest.raises(SourceError) as err:
        discover(entry, get_settings(store=str(tmp_path / "store")))
    msg = str(err.value)
    assert f"ONE cannot connect to http://127.0.0.1:{port} as lab-user" in msg and "s3cret" not in msg
    other_login = entry.model_copy(update={"one": entry.one.model_copy(update={"username": "someone"})})
    assert other_login.version_spec() == entry.version_spec()  # who logs in does not change the dataset version


def test_no_credentials_in_the_shipped_catalog():
    text = "".join(p.read_text() for p in (REPO / "catalog").glob("*.yaml"))
    assert "international" not in text.replace("internationalbrainlab", "") and "password" not in text.lower()


# ------------------------------------------------------------------------------------------- MLflow and the demo


@pytest.mark.slow  # a new MLflow SQLite store takes ~10 s to create here
def test_a_new_tracking_store_keeps_every_artifact_under_its_folder_and_describes_experiments(tmp_path):
    from mlflow.tracking import MlflowClient
    from neurobridge.tracking import mlflow_run

    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    run_id = mlflow_run.start_run(uri, "neurobridge-pretrain", "r", {"a": 1}, {})
    client = MlflowClient(uri)
    default = client.get_experiment("0")  # MLflow's own Default experiment: not ./mlruns of the current directory
    assert default.artifact_location == (tmp_path / "home" / "mlartifacts" / "0").as_uri()
    exp = client.get_experiment_by_name("neurobridge-pretrain")
    assert exp.artifact_location.startswith((tmp_path / "home" / "mlartifacts").as_uri())
    assert "Masked pretraining" in exp.tags["mlflow.note.content"]
    assert client.get_run(run_id).data.tags["git_commit"] == code_commit()


def test_the_demo_says_when_two_retrieval_scores_cannot_be_told_apart():
    from neurobridge.align.retrieval import wilson_interval
    from neurobridge.workflows.demo_align import difference_note

    close = {"pretrained": wilson_interval(83, 100), "scratch": wilson_interval(80, 100)}
    assert difference_note(close, 100).startswith("no difference at this test size")
    apart = {"pretrained": wilson_interval(83, 100), "scratch": wilson_interval(40, 100)}
    assert difference_note(apart, 100) == "pretrained is better: the 95 % intervals over 100 test images do not overlap"
