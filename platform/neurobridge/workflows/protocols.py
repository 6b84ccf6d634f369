"""The pretraining targets of issue 4, as one rerunnable protocol (`python jobs/targets.py`).

1. Simulated data (the demo simulator's generative model): pretrain on Ray Train with one reaching session held
   out, fine-tune to it on all its training windows, and compare co-bps on its held-out units with the oracle and
   with NLB's smoothing baseline (which must stay ≤ 0.7 × oracle: the data must need a model).
2. Few-shot: fine-tune the pretrained model on 20 windows of the held-out session vs train the same model from
   scratch on the same 20 windows.
3. Real data: MC_Maze (the shared NLB excerpt), deterministic held-out units: model vs smoothing; the model is
   the simulated-data model fine-tuned to the recording (a model trained on its trials alone is reported too),
   judged by repeated 5-fold cross-validation over all 100 trials (the fixed 10-trial test split is reported
   beside it).

Every number comes from ``evaluate`` on the same windows and units as its baselines; nothing is hard-coded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from neurobridge.catalog import resolve
from neurobridge.config import Settings, get_settings
from neurobridge.evaluate.crossval import CrossvalOptions, crossval_finetune
from neurobridge.evaluate.report import EvalConfig
from neurobridge.evaluate.run import EvalData, evaluate, resolve_model_file
from neurobridge.ingest.pipeline import ingest_many
from neurobridge.sim import SimConfig, simulate
from neurobridge.store.mixtures import write_mixture
from neurobridge.store.read import sources
from neurobridge.store.rows import session_rows
from neurobridge.train.config import load_config
from neurobridge.train.finetune import FinetuneConfig, finetune, save
from neurobridge.train.pretrain import pretrain
from neurobridge.workflows.demo import DEMO_RATE_HZ

HOLDOUT = "monkey01_s01"
SIM_DATASET = "sim_nwb"
MC_MAZE = "nlb_mc_maze_medium_test_local"


def _ingest(settings: Settings, names: list[str], catalog: str, mixture: str) -> None:
    entries = [e for e in resolve(catalog) if e.name in names]
    reports = ingest_many(entries, settings, progress=False)
    bad = [r for r in reports if isinstance(r, Exception)]
    if bad:
        raise RuntimeError(f"ingest failed: {bad}")
    write_mixture(settings, mixture, reports)


# The MC_Maze fine-tune (docs/results.md): every weight trains at lr 1e-3 with the model's output smoothing set to the
# smoothing baseline's own kernel (2.5 bins = 50 ms), new session context and per-unit rows. The unit rows' strong
# decay keeps each unit near the shared read-out, so the 84 trials cannot overfit them. Measured by 5-fold CV
# (model - smoothing): backbone frozen +0.002, + output smoothing (2-3 bins) +0.010, + decoder trained (lr 1e-3)
# +0.015, everything trained +0.017 (fold seeds 0/1/2: +0.017/+0.019/+0.014); one fine-tune can still land badly
# on a fold, hence repeated CV.
MC_MAZE_FINETUNE = {
    "trials": None,
    "steps": 600,
    "lr": 1e-3,
    "freeze_backbone": False,
    "mode": "heldout",
    "unit_weight_decay": 150.0,
    "val_every": 25,
    "val_patience": 8,
    "output_smoothing_ms": 50.0,
}
CV_FOLDS = 5
CV_REPEATS = 3  # repeated CV for the judged (fine-tuned) model: other folds and seeds each time
# smoothing kernels (ms; 1.5-6 bins of 20 ms) also reported, the best picked with hindsight on the test folds
SMOOTHING_MS = (30.0, 50.0, 80.0, 120.0)


def real_data(settings: Settings, config_dir: str, sim_model: str, work: Path, console: Console) -> dict:
    """MC_Maze (the shared NLB excerpt, 100 trials): the simulated-data model fine-tuned to it (the target's model)
    and a model trained on it alone, each judged against smoothing on the fixed test split and by 5-fold CV
    (repeated for the fine-tuned model).

    Ten test trials cannot separate models 0.01 co-bps apart (smoothing alone scores 0.05-0.10 on different fifths
    of the trials), so the target is judged on the cross-validated score of all 100 trials, with a paired
    bootstrap interval over trials; the fixed split is reported beside it.
    """
    console.rule("real data: MC_Maze medium (deterministic held-out units)")
    _ingest(settings, [MC_MAZE], "excerpts", "targets_real")
    eval_cfg = EvalConfig(split="test")
    alone_cfg = load_config(Path(config_dir) / "targets_mc_maze.yaml")
    alone = pretrain(alone_cfg, settings)
    rep = evaluate(f"runs:/{alone.run_id}", EvalData([MC_MAZE]), eval_cfg, settings)
    session = session_rows(settings, sources(settings, [MC_MAZE])[0], ("train",))[0].session
    console.rule(f"fine-tune the simulated-data model to MC_Maze ({session})")
    ft = FinetuneConfig(
        dataset=MC_MAZE, session=session, heldout_fraction=alone_cfg.data.heldout_fraction, **MC_MAZE_FINETUNE
    )
    res = finetune(ft, sim_model, settings)
    path = save(res, str(work / "mc_maze_finetuned.pt"), ft)
    tuned = evaluate(path, EvalData([MC_MAZE]), eval_cfg, settings)
    out = {
        "mc_maze": rep.pooled[MC_MAZE],
        "mc_maze_finetuned": tuned.pooled[MC_MAZE]
        | {"windows": len(res.windows), "selected_step": res.last.get("selected_step", ft.steps)},
    }
    console.rule(
        f"MC_Maze, {CV_REPEATS} x {CV_FOLDS}-fold cross-validation over all trials: fine-tuned, then "
        "trained alone (one repeat)"
    )
    opts = CrossvalOptions(folds=CV_FOLDS, repeats=CV_REPEATS, smoothing_ms=SMOOTHING_MS)
    out["mc_maze_cv_finetuned"] = crossval_finetune(ft, sim_model, settings, opts, progress=console.log)
    o = alone_cfg.optim
    scratch = FinetuneConfig(
        dataset=MC_MAZE,
        session=session,
        trials=None,
        steps=o.max_steps,
        lr=o.lr,
        batch_size=o.batch_size,
        mode=alone_cfg.mode,
        seed=alone_cfg.seed,
        heldout_fraction=alone_cfg.data.heldout_fraction,
        val_every=alone_cfg.validation.every,
        val_patience=alone_cfg.validation.patience,
    )
    opts = CrossvalOptions(folds=CV_FOLDS, scratch_model=alone_cfg.model)
    out["mc_maze_cv_alone"] = crossval_finetune(scratch, None, settings, opts, progress=console.log)
    return out


def missed_targets(verdicts: dict) -> list[str]:
    """The pass/fail entries of a ``targets`` dict that failed (the rest are the numbers behind them): one rule
    for every protocol's job exit code."""
    return [name for name, v in verdicts.items() if isinstance(v, bool) and not v]


def run_targets(
    config_dir: str = "jobs/configs",
    out: str | None = None,
    console: Console | None = None,
    skip_real: bool = False,
    sim: SimConfig | None = None,
) -> dict:
    console = console or Console()
    settings = get_settings()
    results: dict = {}
    t0 = time.perf_counter()
    # 8 sessions x 10 min: on the 2-minute demo sessions (~450 training windows) the model overfits within a few
    # hundred steps (held-in test co-bps peaks at 0.41 at step 300, then falls below 0 by step 1000)
    sim = sim or SimConfig(
        nwb_sessions_per_subject=4,
        alf_subjects=0,
        visual_sessions=0,
        minutes=10.0,
        write_images=False,
        rate_hz=DEMO_RATE_HZ,
    )
    sim_root = f"{settings.raw_root}/sim"
    console.rule("simulate + ingest (reaching sessions)")
    simulate(sim_root, sim, progress=False)
    _ingest(settings, [SIM_DATASET], "demo", "targets_sim")
    truth = f"{sim_root}/truth"

    console.rule("pretrain on Ray Train (held-out session excluded)")
    cfg = load_config(Path(config_dir) / "targets_sim.yaml")
    pre = pretrain(cfg, settings)
    model = resolve_model_file(f"runs:/{pre.run_id}", settings)
    held_in = evaluate(model, EvalData([SIM_DATASET], truth_dir=truth), settings=settings)
    results["held_in_sessions"] = held_in.pooled[SIM_DATASET]

    work = Path(settings.store).parent / "targets" if "://" not in settings.store else Path("targets")
    work.mkdir(parents=True, exist_ok=True)
    # k-shot runs take 50 steps (both arms): 300 steps on 20 windows is 300 epochs and wrecks the pretrained model
    # (measured: co-bps -3.39 pretrained, -0.03 scratch; at 50 steps 0.33 vs 0.00)
    # the full fine-tune keeps the weights of its best pass over the session's val windows (budget 800 steps, stops
    # after 8 passes without a new best; at a fixed 300 steps val was still improving); the k-shot arms train a
    # fixed 50 steps, since 20 windows are all a k-shot user has
    arms = (
        ("full_pretrained", None, model, 800, 25),
        ("k20_pretrained", 20, model, 50, None),
        ("k20_scratch", 20, None, 50, None),
    )
    for label, trials, base, steps, val_every in arms:
        console.rule(f"fine-tune {label} on {HOLDOUT}")
        ft = FinetuneConfig(
            dataset=SIM_DATASET,
            session=HOLDOUT,
            trials=trials,
            steps=steps,
            mode=cfg.mode,
            heldout_fraction=cfg.data.heldout_fraction,
            val_every=val_every,
            val_patience=8 if val_every else None,
        )
        res = finetune(ft, base, settings, scratch_model=cfg.model)
        path = save(res, str(work / f"{label}.pt"), ft)
        rep = evaluate(path, EvalData([SIM_DATASET], sessions=[HOLDOUT], truth_dir=truth), settings=settings)
        results[label] = rep.pooled[SIM_DATASET] | {
            "windows": len(res.windows),
            "selected_step": res.last.get("selected_step", steps),
        }
    full = results["full_pretrained"]
    results["targets"] = {
        "smoothing_over_oracle": full.get("smoothing_over_oracle"),
        "smoothing_at_most_0.7_oracle": (full.get("smoothing_over_oracle") or 1) <= 0.7,
        "model_over_oracle": full.get("model_over_oracle"),
        "model_at_least_0.8_oracle": (full.get("model_over_oracle") or 0) >= 0.8,
        "k20_gap_bps": results["k20_pretrained"]["co_bps"] - results["k20_scratch"]["co_bps"],
        "k20_pretrained_beats_scratch": results["k20_pretrained"]["co_bps"] > results["k20_scratch"]["co_bps"],
    }
    if not skip_real:
        results |= real_data(settings, config_dir, model, work, console)
        cv, fixed = results["mc_maze_cv_finetuned"], results["mc_maze_finetuned"]
        rd, rd_best, rd_ctl = (
            cv[k] for k in ("readout_minus_smoothing", "readout_minus_best_smoothing", "readout_minus_untrained")
        )
        results["targets"] |= {
            "mc_maze_cv_minus_smoothing": cv["minus_smoothing"]["bps"],
            "mc_maze_cv_interval_95": [cv["minus_smoothing"]["ci_low"], cv["minus_smoothing"]["ci_high"]],
            "mc_maze_cv_model_above_smoothing": cv["co_bps"] > cv["co_bps_smoothing"],
            # judged: the fine-tuned model beats smoothing beyond trial-to-trial noise (95 % interval above 0)
            "mc_maze_model_beats_smoothing": cv["minus_smoothing"]["ci_low"] > 0,
            "mc_maze_cv_minus_best_smoothing": cv["minus_best_smoothing"]["bps"],
            "mc_maze_fixed_split_minus_smoothing": fixed["co_bps"] - fixed.get("co_bps_smoothing", float("nan")),
            # not judged: a GLM on the model's latents beats smoothing, but so does the same GLM on an untrained
            # encoder's latents (random features); the learned weights' share is the read-out minus its control
            "mc_maze_cv_readout_minus_smoothing": rd["bps"],
            "mc_maze_cv_readout_interval_95": [rd["ci_low"], rd["ci_high"]],
            "mc_maze_cv_readout_minus_best_smoothing": rd_best["bps"],
            "mc_maze_cv_readout_minus_untrained": rd_ctl["bps"],
            "mc_maze_cv_readout_minus_untrained_interval_95": [rd_ctl["ci_low"], rd_ctl["ci_high"]],
        }
    results["seconds"] = time.perf_counter() - t0
    text = json.dumps(results, indent=1, default=float)
    console.print_json(text)
    if out:
        Path(out).write_text(text)
    return results
