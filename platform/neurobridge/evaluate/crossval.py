"""K-fold cross-validated co-bps of fine-tuning to one session: every trial is a test trial exactly once.

A small recording gives a small test split: on MC_Maze's 100 trials the smoothing baseline alone scores anywhere
from 0.05 to 0.10 co-bps on different fifths of the trials, so a 10-trial test split cannot tell two models 0.01
apart. Folds score the model and the baseline on all trials; each fold's model picks its step on val trials drawn
from its own training part (never from the test fold); a paired bootstrap over trials says whether the
model-minus-baseline difference is more than trial-to-trial noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from neurobridge.config import Settings, get_settings
from neurobridge.evaluate import baselines, metrics
from neurobridge.evaluate.report import EvalConfig, SessionResult, evaluate_session
from neurobridge.models.config import ModelConfig
from neurobridge.storage import StoreError
from neurobridge.store.read import sources
from neurobridge.store.rows import SessionRows, session_rows, stack_counts
from neurobridge.store.splits import HeldoutSplit, heldout_flags, with_heldout
from neurobridge.train.finetune import FinetuneConfig, finetune, pick_windows


def fold_windows(
    rows: list[dict], folds: int, val_fraction: float, seed: int = 0
) -> list[tuple[list[dict], list[dict], list[dict]]]:
    """(train, val, test) per fold: test folds partition the rows; val is drawn from the rest, disjoint from both."""
    if folds < 2 or len(rows) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {max(folds, 2)} windows, got {len(rows)}")
    ranked = pick_windows(rows, None, f"fold\x1f{seed}")  # hash order: the same folds on any machine and store
    out = []
    for f in range(folds):
        test = [r for i, r in enumerate(ranked) if i % folds == f]
        rest = pick_windows([r for i, r in enumerate(ranked) if i % folds != f], None, f"val\x1f{seed}")
        n_val = max(1, round(val_fraction * len(rest))) if val_fraction > 0 else 0
        out.append((rest[n_val:], rest[:n_val], test))
    return out


@dataclass(frozen=True)
class CrossvalOptions:
    """How the cross-validation runs.

    ``scratch_model``: with no pretrained model file, train this architecture from scratch (the trained-alone arm).
    ``smoothing_ms``: the smoothing baseline again with each of these kernel widths (ms), and model and read-out
    against the best of them, picked on the test folds themselves: a baseline tuned with hindsight, so a win over it
    does not hinge on the default kernel. ``repeats`` > 1: repeated K-fold CV, each repeat with other folds and
    another seed (``ft.seed + r``).
    """

    folds: int = 5
    repeats: int = 1
    val_fraction: float = 0.1
    scratch_model: ModelConfig | None = None
    eval_cfg: EvalConfig | None = None
    smoothing_ms: Sequence[float] = ()

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")


def crossval_finetune(
    ft: FinetuneConfig,
    model_file: str | None,
    settings: Settings | None = None,
    opts: CrossvalOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Fine-tune ``model_file`` (or train ``opts.scratch_model`` from scratch) on each fold of one session's windows.

    Uses every window the session has (train, val and test splits of the store). The smoothing baseline of a fold
    is fitted on all its non-test windows (train + val: as much as the model saw, its penalty tuned by inner CV).
    Returns pooled co-bps over all trials of the model, of the GLM read-out of its latents and of an untrained
    encoder's latents (``readout.py``: the read-out's control) and of smoothing, the paired differences with their
    bootstrap intervals, and per-fold numbers.

    A single fine-tune on 80 trials can land well or badly by chance; with repeats the scores are means over
    repeats, and the intervals resample distinct trials with each trial's gains averaged over its repeats.
    """
    opts = opts or CrossvalOptions()
    settings = settings or get_settings()
    eval_cfg = opts.eval_cfg or EvalConfig(split="test", latent_readout=True)
    src = sources(settings, [ft.dataset])[0]
    found = session_rows(settings, src, ("train", "val", "test"), {ft.session})
    if not found:
        raise StoreError(f"{ft.dataset}: no windows for session {ft.session!r}")
    rows = [r for part in found[0].rows.values() for r in part]
    split = HeldoutSplit(heldout_flags(settings, [src]), ft.heldout_fraction)
    tally = _Tally(opts.smoothing_ms)
    runs = [
        (rep, f, part)
        for rep in range(opts.repeats)
        for f, part in enumerate(fold_windows(rows, opts.folds, opts.val_fraction, ft.seed + rep))
    ]
    for rep, f, (train, val, test) in runs:
        if progress is not None:
            progress(
                f"fold {f + 1}/{opts.folds}"
                + (f" of repeat {rep + 1}/{opts.repeats}" if opts.repeats > 1 else "")
                + f": {len(train)} train, {len(val)} val, {len(test)} test windows"
            )
        res = finetune(
            ft.model_copy(update={"seed": ft.seed + rep}), model_file, settings, opts.scratch_model, (train, val)
        )
        sess = SessionRows(found[0].dataset, ft.session, {"train": train + val, eval_cfg.split: test})
        forecast = "forward" in res.model.cfg.trained_modes(ft.mode)
        r = evaluate_session(res.model, res.vocabs, sess, split, eval_cfg.model_copy(update={"forecast": forecast}))
        if r is None or "model" not in r.pooled or "smoothing" not in r.pooled:
            raise StoreError(f"{ft.dataset}/{ft.session}: fold {f} has no held-out spike counts to score")
        tally.add(r, test, rep)
        tally.per_fold[-1]["selected_step"] = res.last.get("selected_step", ft.steps)
        if tally.by_sigma:
            tally.add_kernels(with_heldout(train + val, split), with_heldout(test, split), eval_cfg.glm_l2)
    out = {"folds": opts.folds, "repeats": opts.repeats, "windows": len(rows)}
    return out | tally.summary(opts.folds, len(runs), ft.seed) | {"per_fold": tally.per_fold}


class _Tally:
    """Per-fold scores collected over the runs, and their pooled summary with paired intervals."""

    def __init__(self, smoothing_ms: Sequence[float]):
        self.pairs: dict[str, list] = {"model": [], "readout": [], "readout_untrained": [], "smoothing": []}
        self.by_sigma: dict[float, list] = {float(s): [] for s in smoothing_ms}
        self.per_fold: list[dict] = []
        self.trial_ids: list = []

    def add(self, r: SessionResult, test: list[dict], rep: int) -> None:
        self.trial_ids += [w["sample_id"] for w in test]
        for key in self.pairs:
            if key in r.pooled:
                self.pairs[key].append(r.pooled[key])
        scored = {
            k: v for k, v in r.metrics.items() if k.startswith(("co_bps_readout", "co_bps_smoothing", "smoothing_"))
        }
        self.per_fold.append({"repeat": rep, "co_bps": r.metrics["co_bps"], **scored, "test_windows": len(test)})

    def add_kernels(self, train: list[dict], test: list[dict], l2: Sequence[float]) -> None:
        """The smoothing baseline of this fold again at every extra kernel width."""
        tr, te = stack_counts(train), stack_counts(test)
        held = np.asarray(test[0]["heldout"], dtype=bool)
        T = min(tr.shape[1], te.shape[1])
        tr, te = tr[:, :T], te[:, :T]
        bin_ms = float(test[0]["bin_ms"])
        for sigma, got in self.by_sigma.items():
            pred = baselines.smoothing_baseline(tr[..., ~held], tr[..., held], te[..., ~held], sigma / bin_ms, l2)
            got.append((pred, te[..., held]))

    def summary(self, folds: int, n_runs: int, seed: int) -> dict:
        def pooled(got: list) -> float:  # pooled over the folds of a repeat, then the mean over repeats
            return float(
                np.mean([metrics.pooled_bits_per_spike(got[i : i + folds]) for i in range(0, len(got), folds)])
            )

        def diff(a: str, b: list) -> dict:
            return asdict(metrics.paired_bps_difference(self.pairs[a], b, seed=seed, trials=self.trial_ids))

        out: dict = {}
        for key, got in self.pairs.items():
            if len(got) == n_runs:
                out["co_bps" if key == "model" else f"co_bps_{key}"] = pooled(got)
        readout = len(self.pairs["readout"]) == n_runs
        out["minus_smoothing"] = diff("model", self.pairs["smoothing"])
        if readout:
            out["readout_minus_smoothing"] = diff("readout", self.pairs["smoothing"])
            out["readout_minus_untrained"] = diff("readout", self.pairs["readout_untrained"])  # the weights' share
        if self.by_sigma:
            scores = {sigma: pooled(got) for sigma, got in self.by_sigma.items()}
            best = max(scores, key=scores.get)
            out["smoothing_by_sigma"] = {str(sigma): v for sigma, v in scores.items()}
            out["minus_best_smoothing"] = diff("model", self.by_sigma[best]) | {"sigma_ms": best}
            if readout:
                out["readout_minus_best_smoothing"] = diff("readout", self.by_sigma[best]) | {"sigma_ms": best}
        return out
