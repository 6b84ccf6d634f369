"""NLB'21 submissions and their scores: the submission layout ``neurobridge evaluate --nlb-out`` writes, and
``neurobridge nlb-score``, which scores one against a target file with NLB's formulas (nlb_tools ``evaluation.py``).

Layout (one HDF5 group per dataset, ``<name>`` at 5 ms and ``<name>_20`` at 20 ms; arrays [trials, bins, units]
of expected counts per bin, trials in time order):
``train_rates_heldin``, ``train_rates_heldout``, ``eval_rates_heldin``, ``eval_rates_heldout`` and, for models
trained to forecast, ``eval_rates_heldin_forward``, ``eval_rates_heldout_forward`` (the 200 ms after each window).

Targets (NLB's ``eval_data_test.h5`` and files written the same way): ``eval_spikes_heldout`` and, each score
only where its arrays are there, ``train_behavior``/``eval_behavior`` (with ``train_decode_mask``/``eval_decode_mask``
if given), ``psth`` ([eval trials × bins, units]), ``eval_spikes_heldin_forward``/``eval_spikes_heldout_forward``.
Scores, as NLB computes them:

* co-bps: Poisson log-likelihood of the held-out spikes under the rates minus under each neuron's mean rate (over
  trials and bins of these spikes), per spike, in bits; zero rates become 1e-9, NaN spikes are not scored;
* vel R²: ridge from train rates (held-in and held-out) to train behaviour, α ∈ logspace(-4, 0, 9) by 5-fold CV,
  R² on the eval trials (mean over behaviour columns), per decode mask, averaged;
* psth R²: R² of eval rates (flattened) to the condition PSTHs, averaged over neurons;
* fp-bps: bits/spike of the forward rates on the forward spikes, held-in and held-out together.

The official NLB'21 test targets cannot be fetched here; :data:`OFFICIAL_TARGET` pins the file a user with internet
downloads (docs/evaluation.md says how), and the scorer says whether it was given that file.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurobridge.evaluate import behaviour
from neurobridge.evaluate.metrics import gammaln

OFFICIAL_TARGET = {
    "name": "eval_data_test.h5",
    "bytes": 105_927_616,
    "sha256": "f2f434d30193251b58e6a693381fdd185c8fbc0e47d38f8810e65295bc42c865",
    "url": "https://github.com/neurallatents/nlb_tools/blob/main/data/eval_data_test.h5 (Git LFS)",
}
RATES = ("train_rates_heldin", "train_rates_heldout", "eval_rates_heldin", "eval_rates_heldout")
FORWARD = ("eval_rates_heldin_forward", "eval_rates_heldout_forward")
NLB_BINS_MS = (5.0, 20.0)


class SubmissionError(ValueError):
    """A submission that cannot be scored: the message names the group, the expected and the found shape."""


def group_name(dataset: str, bin_ms: float) -> str:
    """NLB's group key: ``mc_maze`` at 5 ms, ``mc_maze_20`` at 20 ms."""
    if bin_ms not in NLB_BINS_MS:
        raise SubmissionError(f"NLB scores rates at 5 or 20 ms bins, not {bin_ms:g} ms")
    return dataset if bin_ms == 5.0 else f"{dataset}_20"


def resample(rates: np.ndarray, from_ms: float, to_ms: float) -> np.ndarray:
    """Expected counts [trials, bins, units] at ``from_ms`` bins → ``to_ms`` bins as a piecewise-constant rate:
    each bin's count spread evenly over the finest width both divide (their common divisor), then summed in
    groups of ``to_ms``, so a 50 ms model writes NLB's 20 ms bins through 10 ms. A window that is not a whole
    number of ``to_ms`` bins is an error, never a silently shortened one.

    Evenly, because the shape inside a bin does not matter to the scores: on MC_Maze's full test split a 50 ms
    smoothing GLM's held-out rates score 0.1932 co-bps spread evenly at 5 ms and 0.1940 linearly interpolated
    (docs/results.md), and bits per spike of a piecewise-constant rate equal those of its coarse bins."""
    fine = _common_width(from_ms, to_ms)
    up, down = round(from_ms / fine), round(to_ms / fine)
    x = np.repeat(rates / up, up, axis=1) if up > 1 else rates
    if x.shape[1] % down:
        raise SubmissionError(
            f"a window of {rates.shape[1]} bins of {from_ms:g} ms is not a whole number of {to_ms:g} ms bins"
        )
    return x.reshape(x.shape[0], x.shape[1] // down, down, *x.shape[2:]).sum(axis=2) if down > 1 else x


def _common_width(a_ms: float, b_ms: float) -> float:
    """The largest width both bin widths are whole multiples of (to a microsecond): 10 ms for 50 and 20 ms."""
    a, b = round(a_ms * 1000), round(b_ms * 1000)
    if a <= 0 or b <= 0 or abs(a - a_ms * 1000) > 1e-6 or abs(b - b_ms * 1000) > 1e-6:
        raise SubmissionError(f"bin widths must be positive whole microseconds, not {a_ms:g} and {b_ms:g} ms")
    return math.gcd(a, b) / 1000


@dataclass
class SubmissionGroup:
    """One dataset's arrays at one bin width (expected counts per bin)."""

    name: str
    arrays: dict[str, np.ndarray]


def write_submission(path: str | Path, groups: list[SubmissionGroup]) -> str:
    import h5py

    with h5py.File(path, "w") as f:
        for g in groups:
            grp = f.create_group(g.name)
            for key, value in g.arrays.items():
                grp.create_dataset(key, data=np.asarray(value, dtype=np.float32), compression="gzip")
    return str(path)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def neg_log_likelihood(rates: np.ndarray, spikes: np.ndarray) -> float:
    """NLB's Poisson NLL: NaN spikes are not scored, zero rates become 1e-9, negative or NaN rates are errors."""
    keep = ~np.isnan(spikes)
    r, n = np.array(rates[keep], dtype=np.float64), spikes[keep]
    if np.isnan(r).any() or (r < 0).any():
        raise SubmissionError("rates must be finite and non-negative where spikes are scored")
    r[r == 0] = 1e-9
    return float(np.sum(r - n * np.log(r) + gammaln(n + 1.0)))


def bits_per_spike(rates: np.ndarray, spikes: np.ndarray) -> float:
    null = np.broadcast_to(np.nanmean(spikes, axis=(0, 1), keepdims=True), spikes.shape)
    return (neg_log_likelihood(null, spikes) - neg_log_likelihood(rates, spikes)) / np.nansum(spikes) / np.log(2)


def r2_sklearn(y: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's ``r2_score`` (uniform average; a constant column scores 1 if predicted exactly, else 0)."""
    ss_res = ((y - pred) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    per = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res == 0, 1.0, 0.0))
    return float(per.mean())


def _flat(x: np.ndarray) -> np.ndarray:
    """[trials, bins, ·] → [samples, ·], as NLB flattens before decoding."""
    return x.reshape(-1, x.shape[2]) if x.ndim > 2 else x


def _vel_r2(train_rates, train_behavior, eval_rates, eval_behavior, masks) -> float:
    scores = []
    for i in range(masks[0].shape[1]):
        x_tr, y_tr = _flat(train_rates[masks[0][:, i]]), _flat(train_behavior[masks[0][:, i]])
        x_ev, y_ev = _flat(eval_rates[masks[1][:, i]]), _flat(eval_behavior[masks[1][:, i]])
        ok_tr, ok_ev = ~np.isnan(y_tr[:, 0]), ~np.isnan(y_ev[:, 0])
        alpha, _ = behaviour.ridge_search(x_tr[ok_tr], y_tr[ok_tr], behaviour.ALPHAS, 5)
        fit = behaviour.ridge_path(x_tr[ok_tr], y_tr[ok_tr], [alpha])[0]
        scores.append(r2_sklearn(y_ev[ok_ev], fit.predict(x_ev[ok_ev])))
    return float(np.mean(scores))


def _read(group, key: str, where: str) -> np.ndarray:
    if key not in group:
        raise SubmissionError(f"{where}: group {group.name}/{key} is missing (a submission holds {', '.join(RATES)})")
    return np.asarray(group[key][()], dtype=np.float64)


def _expect(name: str, found: tuple, expected: tuple) -> None:
    if tuple(found) != tuple(expected):
        raise SubmissionError(f"{name}: expected shape {tuple(expected)}, found {tuple(found)}")


def score_group(sub, tgt, where: str) -> dict:
    """One dataset group of a submission against its target group; shapes are checked before any score."""
    r = {k: _read(sub, k, where) for k in RATES}
    held_spikes = np.asarray(tgt["eval_spikes_heldout"][()], dtype=np.float64)
    _expect(f"{sub.name}/eval_rates_heldout", r["eval_rates_heldout"].shape, held_spikes.shape)
    _expect(f"{sub.name}/eval_rates_heldin", r["eval_rates_heldin"].shape[:2], held_spikes.shape[:2])
    n_in, n_out = r["eval_rates_heldin"].shape[2], held_spikes.shape[2]
    # without the target's behaviour the train rates' trial count has nothing to match; their units still must
    n_train = tgt["train_behavior"].shape[0] if "train_behavior" in tgt else r["train_rates_heldin"].shape[0]
    _expect(f"{sub.name}/train_rates_heldin", r["train_rates_heldin"].shape[::2], (n_train, n_in))
    _expect(f"{sub.name}/train_rates_heldout", r["train_rates_heldout"].shape[::2], (n_train, n_out))
    eval_rates = np.concatenate([r["eval_rates_heldin"], r["eval_rates_heldout"]], axis=-1)
    train_rates = np.concatenate([r["train_rates_heldin"], r["train_rates_heldout"]], axis=-1)
    out = {"co-bps": bits_per_spike(r["eval_rates_heldout"], held_spikes)}
    if "train_behavior" in tgt and "eval_behavior" in tgt:  # NLB's targets hold it for the datasets it decodes
        train_b = np.asarray(tgt["train_behavior"][()], dtype=np.float64)
        eval_b = np.asarray(tgt["eval_behavior"][()], dtype=np.float64)
        if "train_decode_mask" in tgt:
            masks = (np.asarray(tgt["train_decode_mask"][()]), np.asarray(tgt["eval_decode_mask"][()]))
        else:
            masks = (np.ones((train_rates.shape[0], 1), bool), np.ones((eval_rates.shape[0], 1), bool))
        out["vel R2"] = _vel_r2(train_rates, train_b, eval_rates, eval_b, masks)
    if "psth" in tgt:
        psth = np.asarray(tgt["psth"][()], dtype=np.float64)
        flat = eval_rates.reshape(-1, eval_rates.shape[2])
        _expect(f"{sub.name}/eval_rates (flattened, for psth)", flat.shape, psth.shape)
        keep = ~np.isnan(psth[:, 0])
        out["psth R2"] = r2_sklearn(psth[keep], flat[keep])
    if all(k in sub for k in FORWARD) and "eval_spikes_heldin_forward" in tgt:
        fwd_spikes = np.dstack([tgt["eval_spikes_heldin_forward"][()], tgt["eval_spikes_heldout_forward"][()]])
        fwd = np.dstack([_read(sub, k, where) for k in FORWARD])
        _expect(f"{sub.name}/eval_rates_*_forward (held-in, held-out stacked)", fwd.shape, fwd_spikes.shape)
        out["fp-bps"] = bits_per_spike(fwd, fwd_spikes.astype(np.float64))
    return out


def score_submission(submission: str | Path, target: str | Path) -> dict:
    """Scores of every dataset group present in both files, and whether ``target`` is NLB's official file."""
    import h5py

    out: dict = {"target": str(target), "official_target": _is_official(target), "datasets": {}}
    with h5py.File(submission, "r") as sub, h5py.File(target, "r") as tgt:
        scored = [name for name in sub if name in tgt and "eval_spikes_heldout" in tgt[name]]
        if not scored:
            raise SubmissionError(
                f"{submission}: no dataset group also in {target} with eval_spikes_heldout (submission groups: "
                f"{', '.join(sub) or 'none'}; target groups: {', '.join(tgt) or 'none'})"
            )
        for name in scored:
            out["datasets"][name] = score_group(sub[name], tgt[name], str(submission))
    return out


def _is_official(path: str | Path) -> bool:
    p = Path(path)
    return p.stat().st_size == OFFICIAL_TARGET["bytes"] and file_sha256(p) == OFFICIAL_TARGET["sha256"]


NLB_FORWARD_MS = 200.0  # NLB's fp_len


def _in_time_order(rows: list[dict]) -> list[dict]:
    """NLB orders trials by time (trial id); so does the submission."""
    return sorted(rows, key=lambda r: float(r["t_start"]))


def model_group(model, vocabs, train: list[dict], test: list[dict], name: str, bin_ms: float, forecast: bool):
    """A model's submission group for one session: train and eval rates from held-in spikes (rows carry held-out
    flags), in time order, at ``bin_ms`` (5 or 20); forward rates only for a model trained to forecast."""
    from neurobridge.evaluate.readout import heldin_heldout_rates

    model_ms = float(test[0]["bin_ms"])
    n_fwd = NLB_FORWARD_MS / model_ms
    if forecast and abs(n_fwd - round(n_fwd)) > 1e-9:
        raise SubmissionError(f"NLB forecasts {NLB_FORWARD_MS:g} ms, not a whole number of {model_ms:g} ms bins")
    tr_in, tr_out, _ = heldin_heldout_rates(model, vocabs, _in_time_order(train))
    n = round(n_fwd) if forecast else 0
    ev_in, ev_out, fwd = heldin_heldout_rates(model, vocabs, _in_time_order(test), n_forward=n)
    arrays = {
        "train_rates_heldin": tr_in,
        "train_rates_heldout": tr_out,
        "eval_rates_heldin": ev_in,
        "eval_rates_heldout": ev_out,
    }
    if fwd is not None:
        held = np.asarray(test[0]["heldout"], dtype=bool)
        arrays |= {"eval_rates_heldin_forward": fwd[..., ~held], "eval_rates_heldout_forward": fwd[..., held]}
    return _group(name, bin_ms, model_ms, arrays)


def with_withheld_units(test: list[dict], train: list[dict], where: str) -> list[dict]:
    """Eval windows laid out in the units of the session's training windows, the held-out units they lack added as
    zero rows. NLB's test files hold only the held-in units (the held-out ones exist only in the train file and the
    target), yet a submission must predict those units on the test trials: the model reads each unit's identity,
    never the added zeros (held-out cells are only predicted, never shown). Windows already laid out alike pass."""
    ref = next((r for r in train if r.get("heldout") is not None and np.any(r["heldout"])), None)
    if ref is None:
        return test
    ids, held = [str(u) for u in ref["unit_ids"]], np.asarray(ref["heldout"], dtype=bool)
    pos = {u: i for i, u in enumerate(ids)}
    heldin = {u for u, h in zip(ids, held, strict=True) if not h}
    out = []
    for r in test:
        own = [str(u) for u in r["unit_ids"]]
        if own == ids:
            out.append(r)
            continue
        stray, lacking = sorted(set(own) - set(ids)), sorted(heldin - set(own))
        if stray or lacking:
            problems = [f"has units {stray[:5]} that no training window has"] if stray else []
            problems += [f"lacks held-in units {lacking[:5]}"] if lacking else []
            raise SubmissionError(
                f"{where}: eval window {r.get('sample_id')} {' and '.join(problems)}, so its held-out units cannot "
                "be predicted in the training windows' layout (NLB's test file holds the train file's held-in units)"
            )
        n_bins = int(r["n_bins"])
        counts = np.zeros((len(ids), n_bins), dtype=np.asarray(r["counts"]).dtype)
        counts[[pos[u] for u in own]] = np.asarray(r["counts"]).reshape(len(own), n_bins)
        layout = {"n_units": len(ids), "unit_ids": ids, "unit_regions": ref["unit_regions"], "heldout": held}
        out.append(r | layout | {"counts": counts.ravel()})
    return out


def smoothing_group(train: list[dict], test: list[dict], name: str, bin_ms: float, cfg) -> SubmissionGroup:
    """NLB's smoothing baseline as a submission of the same windows and units as the model's: held-in rates are
    the smoothed held-in spikes, held-out rates a Poisson GLM on them fitted on the training windows, its kernel
    and penalty chosen by cross-validation there (``cfg.smoothing_ms`` × ``cfg.glm_l2``). Scored with the same
    target, it is the baseline on the official held-out units that a model's number needs beside it."""
    from neurobridge.evaluate.baselines import smooth_spikes, smoothing_search
    from neurobridge.store.rows import stack_counts

    train, test = _in_time_order(train), _in_time_order(test)
    model_ms, held = float(test[0]["bin_ms"]), np.asarray(test[0]["heldout"], dtype=bool)
    tr, ev = stack_counts(train), stack_counts(test)
    both_in = np.concatenate([tr[..., ~held], ev[..., ~held]])
    out, choice = smoothing_search(tr[..., ~held], tr[..., held], both_in, model_ms, cfg.smoothing_ms, cfg.glm_l2)
    smoothed = smooth_spikes(both_in, choice.sigma_bins(model_ms))
    n = len(train)
    arrays = {
        "train_rates_heldin": smoothed[:n],
        "train_rates_heldout": out[:n],
        "eval_rates_heldin": smoothed[n:],
        "eval_rates_heldout": out[n:],
    }
    return _group(name, bin_ms, model_ms, arrays)


def _group(name: str, bin_ms: float, model_ms: float, arrays: dict[str, np.ndarray]) -> SubmissionGroup:
    return SubmissionGroup(group_name(name, bin_ms), {k: resample(v, model_ms, bin_ms) for k, v in arrays.items()})


def write_model_submission(model_ref: str, data, cfg, settings, where: tuple, smoothing_out=None) -> list[str]:
    """``neurobridge evaluate --nlb-out``: one group per evaluated session (train = its train and val windows,
    eval = ``cfg.split``), written to ``where`` = (path, NLB dataset name or None, bin width in ms); with
    ``smoothing_out``, the smoothing baseline of the same windows and units there. The windows must be NLB's
    (MC_Maze: move onset -250..+450 ms, what the excerpts' trial windows are)."""
    from neurobridge.evaluate.run import open_evaluation, sessions_of
    from neurobridge.store.splits import with_heldout

    path, name, bin_ms = where
    model, vocabs, extra, srcs, split = open_evaluation(model_ref, data, settings, cfg.allow_partial)
    forecast = "forward" in extra.get("trained_modes", ())
    groups, baselines = [], []
    for src in srcs:
        for sess in sessions_of(settings, src, data, (cfg.split, "train", "val"), cfg.max_sessions):
            train = with_heldout(sess.split("train") + sess.split("val"), split)
            test = with_heldout(sess.split(cfg.split), split)
            if train and test and test[0].get("counts") is not None:
                test = with_withheld_units(test, train, f"{src.name}/{sess.session}")
                label = name or src.name
                groups.append(model_group(model, vocabs, train, test, label, bin_ms, forecast))
                if smoothing_out is not None:
                    baselines.append(smoothing_group(train, test, label, bin_ms, cfg))
    names = [g.name for g in groups]
    if not groups or len(set(names)) != len(names):
        raise SubmissionError(
            f"an NLB submission holds one session per dataset name; found {len(groups)} sessions for {names}: "
            "name one with --session"
        )
    write_submission(path, groups)
    if smoothing_out is not None:
        write_submission(smoothing_out, baselines)
    return names
