"""train/config: the typed pretraining config; an unknown key is an error naming the nearest valid one."""

from __future__ import annotations

import pytest
from neurobridge.config import ConfigError
from neurobridge.train.config import load_config


def test_unknown_config_key_names_the_nearest_valid_one(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.max_step'.*did you mean 'max_steps'"):
        load_config(None, {"optim.max_step": 5})
    bad = tmp_path / "cfg.yaml"
    bad.write_text("optim:\n  lr: 0.001\n  warmup: 3\n")
    with pytest.raises(ConfigError, match="warmup"):
        load_config(bad)
