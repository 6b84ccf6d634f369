"""`python jobs/transfer.py --config jobs/configs/transfer_mc_maze_medium.yaml [--out transfer.json] [--set k=v]`:
the real-data transfer protocol of issue 20 (ingest → pretrain per corpus on Ray Train → k-shot cross-validation of
fine-tuned vs trained-alone vs smoothing on a held-out recording → MLflow + JSON). Thin: parse, call the library."""

import argparse
import sys
from pathlib import Path

from neurobridge.config import log_dir, parse_overrides
from neurobridge.console import quiet_libraries
from neurobridge.workflows.transfer import load_transfer, missed_targets, run_transfer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="a transfer protocol YAML (jobs/configs/transfer_*.yaml)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--set", action="append", default=[], help="override a key, e.g. repeats=1")
    parser.add_argument("--verbose", action="store_true", help="library logs on the console, not only in the log")
    args = parser.parse_args()
    if not args.verbose:  # one line per stage and fold; Ray's and MLflow's own output in <NB_HOME>/logs
        quiet_libraries(log_dir())
    cfg = load_transfer(args.config, parse_overrides(args.set))
    results = run_transfer(cfg, Path(args.config).parent, args.out)
    return 1 if missed_targets(results["targets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
