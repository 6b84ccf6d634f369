"""`python jobs/targets.py [--out targets.json] [--skip-real]`: the pretraining targets of issue 4, rerunnable
(simulate → ingest → pretrain on Ray Train → fine-tune → evaluate against smoothing and oracle; MC_Maze real data).
Thin: parse, call the library."""

import argparse
import sys

from neurobridge.config import log_dir
from neurobridge.console import quiet_libraries
from neurobridge.workflows.protocols import missed_targets, run_targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="jobs/configs", help="folder with targets_sim.yaml, targets_mc_maze.yaml")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--skip-real", action="store_true", help="skip the MC_Maze real-data target")
    parser.add_argument("--verbose", action="store_true", help="library logs on the console, not only in the log")
    args = parser.parse_args()
    if not args.verbose:  # one line per stage; Ray's and MLflow's own output in <NB_HOME>/logs
        quiet_libraries(log_dir())
    results = run_targets(args.configs, args.out, skip_real=args.skip_real)
    return 1 if missed_targets(results["targets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
