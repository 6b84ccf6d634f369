"""tune/results: search results summarised per sampled config across seeds, best first, and plotted against the
searched values."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import REPO
from neurobridge.tune.spec import load_spec

SPECS = REPO / "jobs" / "ablations"


def test_search_results_summarise_each_sampled_config_across_seeds_and_plot_against_the_values():
    from neurobridge.tune import results as res

    spec = load_spec(SPECS / "lr_search.yaml")
    rows = []
    for i, lr in enumerate([1e-3, 3e-3, 1e-2]):
        for seed in (0, 1):
            rows.append(
                {
                    "trial": f"t{i}s{seed}",
                    "mode": "all",
                    "seed": seed,
                    "optim.lr": lr,
                    "optim.weight_decay": 0.01,
                    "model.mask.random": 0.3,
                    "status": "ok",
                    "co_bps": 0.1 * i + 0.01 * seed,
                }
            )
    df = pd.DataFrame(rows)
    summ = res.summarize(df, spec)
    assert len(summ) == 3 and (summ["seeds"] == 2).all()  # one row per sampled config, seeds pooled
    np.testing.assert_allclose(sorted(summ["mean"]), [0.005, 0.105, 0.205])
    md = res.summary_markdown(df, spec)
    assert "| mode | optim.lr | optim.weight_decay | model.mask.random | co_bps |" in md
    assert md.index("| all | 0.01 |") < md.index("| all | 0.001 |")  # best first (metric mode: max)
    fig = res.errorbar_plot(df, spec)
    assert len(fig.axes) == 3 and fig.axes[0].get_xscale() == "log"  # one panel per searched key
