"""inference/registrable: a registered encoder is code plus weights-only tensors (nothing to unpickle), with an
MLflow signature and input example."""

from __future__ import annotations

import pytest
from neurobridge.inference import registrable
from neurobridge.tracking import registry


@pytest.fixture(scope="module")
def store(registry_store):
    """This file's store: two simulated reaching sessions ingested as r_nwb, with MLflow (conftest)."""
    return registry_store


def test_the_registered_model_is_code_plus_weights_with_a_signature_and_example(store, registered):
    from mlflow.tracking import MlflowClient

    run_id, _ = registered
    client = MlflowClient(store.mlflow_uri)
    files = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, registry.MODEL_DIR)}
    assert {"MLmodel", "input_example.json", "pyfunc_encoder.py"} <= files  # the code, not a pickle of it
    assert not any(f.endswith(".pkl") for f in files)  # nothing for load to unpickle
    model, info = registry.load("models:/encoder@candidate", store)
    sig = model.metadata.get_input_schema().input_names()
    assert {"session", "counts", "unit_regions", "n_units", "n_bins"} <= set(sig)
    assert model.metadata.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 32)
    assert model.metadata.saved_input_example_info["type"] == "dataframe"


def test_the_encoder_gate_compares_every_evaluated_dataset_with_its_smoothing_baseline():
    gate = registrable.encoder_gate
    assert not gate({"loss": 1.0}).evaluated
    ok = gate(
        {"eval.a.co_bps": 0.3, "eval.a.co_bps_smoothing": 0.2, "eval.b.co_bps": 0.1, "eval.b.co_bps_smoothing": 0.1}
    )
    assert ok.passed and ok.reason == "a: co-bps 0.3000 >= smoothing 0.2000; b: co-bps 0.1000 >= smoothing 0.1000"
    one_below = gate(
        {"eval.a.co_bps": 0.3, "eval.a.co_bps_smoothing": 0.2, "eval.b.co_bps": 0.0, "eval.b.co_bps_smoothing": 0.1}
    )
    assert one_below.evaluated and not one_below.passed and one_below.label == "below baseline"
    no_baseline = gate({"eval.a.co_bps": 0.3})
    assert not no_baseline.evaluated and "no smoothing baseline" in no_baseline.reason


def test_the_projector_gate_needs_top1_clear_of_chance_over_the_test_images():
    def metrics(top1: float, n: int) -> dict:
        return {"all.test.image_top1": top1, "all.test.image_chance1": 1 / n, "all.test.n_candidates": float(n)}

    assert registrable.align_gate(metrics(0.30, 100)).passed  # 95 % interval 0.22-0.40, chance 0.01
    assert not registrable.align_gate(metrics(0.02, 100)).passed  # 1-2 hits of 100: not clear of chance
    assert not registrable.align_gate({"loss": 1.0}).evaluated
