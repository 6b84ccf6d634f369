"""workflows/demo: the demo's pretraining recipe is the one shipped as jobs/configs/pretrain_demo.yaml (so
`neurobridge pretrain -c …` and `bench train -c …` train what the demo trains)."""

from __future__ import annotations

from conftest import REPO
from neurobridge.train.config import load_config
from neurobridge.workflows.demo import DEMO_RECIPE, demo_pretrain_config


def test_the_demo_trains_the_shipped_demo_config():
    shipped = load_config(REPO / "jobs" / "configs" / "pretrain_demo.yaml")
    demo = demo_pretrain_config(shipped.data.mixture, DEMO_RECIPE["optim.max_steps"])
    for part in ("mode", "model", "optim", "scaling", "data"):
        assert getattr(demo, part) == getattr(shipped, part), part
