"""`ray job submit … -- python jobs/ablate.py jobs/ablations/masking_modes.yaml [--set key=value …]`: an ablation on
Ray Tune, tracked in MLflow; rerun the same command to resume after the driver died (thin: parse, call the library)."""

import argparse
import sys

from neurobridge.config import parse_job_args
from neurobridge.tune.runner import run_ablation
from neurobridge.tune.spec import load_spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", help="ablation spec YAML")
    args, overrides = parse_job_args(parser)
    result = run_ablation(load_spec(args.spec, overrides))
    print(
        f"ablation {result.name}: {len(result.table)} trials in {result.wall_s:.0f} s wall; parent run "
        f"{result.parent_run_id}; report {result.report}"
    )
    return 0 if (result.table["status"] == "ok").all() else 1


if __name__ == "__main__":
    sys.exit(main())
