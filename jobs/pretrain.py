"""`ray job submit … -- python jobs/pretrain.py --config jobs/configs/pretrain_demo.yaml [--set key=value …]`:
masked pretraining on Ray Train (thin: parse, call the library)."""

import argparse
import sys

from neurobridge.config import parse_job_args
from neurobridge.train.config import load_config
from neurobridge.train.pretrain import pretrain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="YAML pretraining config (default: built-in defaults)")
    args, overrides = parse_job_args(parser)
    result = pretrain(load_config(args.config, overrides))
    print(f"run {result.run_id}: {result.metrics} → model runs:/{result.run_id}, checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
