"""`python jobs/pipeline.py`: the end-to-end demo (simulate → ingest → inspect) on the configured services."""

import argparse
import sys

from neurobridge.demo import run_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=2.0, help="minutes per simulated session")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--catalog", default="demo", help="catalog file stem or YAML path")
    args = parser.parse_args()
    return run_demo(minutes=args.minutes, seed=args.seed, catalog=args.catalog)


if __name__ == "__main__":
    sys.exit(main())
