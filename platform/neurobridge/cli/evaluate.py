"""`neurobridge evaluate | nlb-score | transfer`: judging models (registered by app.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from neurobridge.cli.output import console, fail
from neurobridge.workflows.tables import print_report


def _settings():
    from neurobridge.config import get_settings

    return get_settings()


def evaluate(
    model: str = typer.Argument(..., help="model.pt or runs:/<run id>"),
    dataset: list[str] = typer.Option(None, help="dataset refs (repeatable)"),
    mixture: str = typer.Option(None, help="a mixture name instead of datasets"),
    session: list[str] = typer.Option(None, help="only these sessions (repeatable)"),
    split: str = typer.Option("test", help="the split scored (baselines and decoders fit on `train`)"),
    truth: str = typer.Option(None, help="simulator truth folder (oracle); default <NB_RAW>/sim/truth if present"),
    max_sessions: int = typer.Option(None, help="sessions per dataset"),
    smoothing_ms: list[float] = typer.Option(None, help="smoothing kernel grid in ms (repeatable; default 20…120)"),
    glm_l2: list[float] = typer.Option(None, help="smoothing GLM penalty grid (repeatable; default 1e-5…1)"),
    latent_readout: bool = typer.Option(False, help="also a GLM read-out of the latents, beside its control"),
    behavior_from: str = typer.Option(
        "rates", help="decode behaviour from the model's `rates`, `latents` (per bin) or `patch_latents`"
    ),
    behavior_lag_ms: float = typer.Option(0.0, help="behaviour this many ms after the neural features (NLB: 80)"),
    behavior_smoothing_ms: list[float] = typer.Option(
        None, help="kernel grid (ms, 0 = none; repeatable) for the model's features, chosen by the decoder's CV"
    ),
    behavior_alpha: list[float] = typer.Option(None, help="ridge penalty grid (repeatable; default NLB's 1e-4…1)"),
    nlb_out: Path = typer.Option(None, help="also write an NLB'21 submission (HDF5) of the evaluated sessions"),
    nlb_name: str = typer.Option(None, help="with --nlb-out: NLB dataset name, e.g. mc_maze (default: dataset)"),
    nlb_bin_ms: float = typer.Option(
        5.0, help="with --nlb-out: 5 or 20 ms (from any model bin width: the model's rate, piecewise constant)"
    ),
    nlb_smoothing_out: Path = typer.Option(
        None, help="with --nlb-out: also the smoothing baseline's submission of the same windows and units"
    ),
    out: Path = typer.Option(None, help="also write the report as JSON here"),
    track: bool = typer.Option(True, help="log the report, metrics and figure to MLflow (into the run, for runs:/)"),
    allow_partial: bool = typer.Option(
        False, help="evaluate on dataset versions with failed items (refused by default; recorded in the run)"
    ),
):
    """co-bps / fp-bps / per-region bps / behaviour R² beside mean-rate, smoothing and oracle baselines."""
    from neurobridge.evaluate.behaviour import BehaviorConfig
    from neurobridge.evaluate.report import EvalConfig
    from neurobridge.evaluate.run import EvalData
    from neurobridge.evaluate.run import evaluate as run
    from neurobridge.storage import StoreError

    settings = _settings()
    if truth is None and "://" not in settings.raw_root and (Path(settings.raw_root) / "sim" / "truth").is_dir():
        truth = str(Path(settings.raw_root) / "sim" / "truth")
    if not dataset and not mixture:
        fail("name --dataset (repeatable) or --mixture")
    if nlb_smoothing_out and not nlb_out:
        fail("--nlb-smoothing-out writes the baseline beside a model's submission: give --nlb-out too")
    grids = {"smoothing_ms": smoothing_ms, "glm_l2": glm_l2}
    try:
        cfg = EvalConfig(
            split=split,
            max_sessions=max_sessions,
            allow_partial=allow_partial,
            latent_readout=latent_readout,
            behavior=BehaviorConfig(
                features=behavior_from,
                lag_ms=behavior_lag_ms,
                **({"feature_smoothing_ms": behavior_smoothing_ms} if behavior_smoothing_ms else {}),
                **({"alphas": behavior_alpha} if behavior_alpha else {}),
            ),
            **{k: v for k, v in grids.items() if v},
        )
        data = EvalData(dataset, mixture, session, truth_dir=truth)
        with console.status("evaluating…") as status:
            report = run(model, data, cfg, settings, track, progress=lambda s: status.update(f"evaluating {s}"))
        if nlb_out:
            from neurobridge.evaluate.nlb import write_model_submission

            where = (nlb_out, nlb_name, nlb_bin_ms)
            written = write_model_submission(model, data, cfg, settings, where, nlb_smoothing_out)
            console.print(f"NLB submission ({', '.join(written)}) → {nlb_out}")
            if nlb_smoothing_out:
                console.print(f"NLB submission of the smoothing baseline → {nlb_smoothing_out}")
    except (StoreError, ValueError) as err:
        fail(str(err))
    print_report(report)
    if out:
        out.write_text(json.dumps(report.to_dict(), indent=1, default=float))
        console.print(f"report → {out}")
    if report.run_id:
        console.print(f"MLflow run: {report.run_id}")


def nlb_score(
    submission: Path = typer.Argument(..., help="submission HDF5 (neurobridge evaluate --nlb-out)"),
    target: Path = typer.Option(..., help="NLB target file (eval_data_test.h5) or one in its structure"),
    out: Path = typer.Option(None, help="also write the scores as JSON here"),
):
    """Score an NLB'21 submission with NLB's formulas: co-bps, vel R², psth R², fp-bps per dataset."""
    from neurobridge.evaluate.nlb import OFFICIAL_TARGET, SubmissionError, score_submission

    try:
        scores = score_submission(submission, target)
    except (SubmissionError, OSError) as err:
        fail(str(err))
    for name, s in scores["datasets"].items():
        unscored = "" if "vel R2" in s else " (vel R² not scored: the target holds no behaviour)"
        console.print(f"[bold]{name}[/]: " + ", ".join(f"{k} {v:.4f}" for k, v in s.items()) + unscored)
    if not scores["official_target"]:
        console.print(
            f"(target is not NLB's official {OFFICIAL_TARGET['name']}: sha256 {OFFICIAL_TARGET['sha256'][:12]}…, "
            f"{OFFICIAL_TARGET['bytes']:,} bytes)"
        )
    if out:
        out.write_text(json.dumps(scores, indent=1, default=float))


def transfer(
    config: Path = typer.Option(..., "--config", "-c", help="jobs/configs/transfer_*.yaml"),
    overrides: list[str] = typer.Option(None, "--set", help="override a key, e.g. --set repeats=1"),
    out: Path = typer.Option(None, help="write the results JSON here"),
):
    """The real-data transfer protocol: pretrain per corpus, then k-shot CV of fine-tuned vs alone vs smoothing."""
    from neurobridge.config import ConfigError, parse_overrides
    from neurobridge.storage import StoreError
    from neurobridge.workflows.transfer import load_transfer, run_transfer

    try:
        cfg = load_transfer(config, parse_overrides(overrides))
        results = run_transfer(cfg, config.parent, str(out) if out else None, echo=console.log)
    except (ConfigError, StoreError, ValueError) as err:
        fail(str(err))
    for k, res in results["kshot"].items():
        scores = ", ".join(f"{arm} {v:.4f}" for arm, v in res["co_bps"].items())
        console.print(f"k={k}: co-bps {scores}")
        for pair, d in res["differences"].items():
            console.print(f"    {pair}: {d['bps']:+.4f} (95 % {d['ci_low']:+.4f} … {d['ci_high']:+.4f})")
    console.print_json(json.dumps(results["targets"], default=float))
    console.print(f"MLflow run: {results['run_id']}")
