"""tune/spec: typed ablation specs. Every shipped spec validates with all its trial configs, the requested
ablations are shipped, and a bad spec fails before Ray, naming the key and the nearest valid one."""

from __future__ import annotations

import pytest
from conftest import REPO
from neurobridge.tune.spec import SpecError, load_spec, trials

SPECS = REPO / "jobs" / "ablations"


SHIPPED = sorted(p for p in SPECS.glob("*.yaml") if not p.name.startswith("base_"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_spec_validates_with_all_its_trial_configs(path):
    spec = load_spec(path)
    grid = trials(spec)
    assert len(grid) == len(spec.seeds) * _product(len(v) for v in spec.axes.values())
    assert len({t["key"] for t in grid}) == len(grid)


def _product(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def test_the_six_requested_ablations_are_shipped():
    kinds = {p.stem: load_spec(p) for p in SHIPPED}
    assert {a for s in kinds.values() for a in s.axes} >= {
        "mode",
        "data",
        "mixing",
        "regions",
        "encoder",
        "width",
        "depth",
    }
    modes = [v.label for v in kinds["masking_modes"].axes["mode"]]
    assert modes == ["random", "temporal", "neuron", "intra-region", "inter-region", "all"]


def test_an_axis_value_naming_no_config_key_is_an_error_naming_it(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        f"name: bad\nkind: pretrain\nbase: {REPO}/jobs/configs/pretrain_demo.yaml\n"
        "axes:\n  lr:\n    - {label: big, overrides: {optim.max_step: 5}}\n"
    )
    with pytest.raises(SpecError, match=r"bad\.yaml.*lr=big.*optim\.max_step'.*did you mean 'max_steps'"):
        load_spec(spec)
    align = tmp_path / "bad_align.yaml"
    align.write_text(
        f"name: bad\nkind: align\nbase: {SPECS}/base_align_tvsd.yaml\n"
        "axes:\n  r:\n    - {label: v1, overrides: {data.region: [V1]}}\n"
    )
    with pytest.raises(SpecError, match=r"data\.region'.*did you mean 'regions'"):
        load_spec(align)


def test_a_spec_with_zero_trials_or_an_unknown_field_is_refused(tmp_path):
    spec = tmp_path / "empty.yaml"
    spec.write_text(f"name: e\nkind: pretrain\nbase: {REPO}/jobs/configs/pretrain_demo.yaml\naxes:\n  mode: []\n")
    with pytest.raises(SpecError, match="zero trials"):
        load_spec(spec)
    with pytest.raises(SpecError, match="at least one seed"):
        load_spec(SPECS / "mixing.yaml", {"seeds": []})
    with pytest.raises(SpecError, match="max_concurrent_trial'.*did you mean 'max_concurrent_trials'"):
        load_spec(SPECS / "mixing.yaml", {"max_concurrent_trial": 2})
