"""inference/registrable: a registered encoder is code plus weights-only tensors (nothing to unpickle), with an
MLflow signature and input example."""

from __future__ import annotations

import pytest
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
