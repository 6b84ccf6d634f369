"""`python jobs/benchmark.py ingest`: the same benchmark as `neurobridge bench ingest`."""

import argparse

from neurobridge.bench.ingest import bench_ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["ingest"])
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--growth", type=int, default=8)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    bench_ingest(n_units=args.units, minutes=args.minutes, growth=args.growth, workdir=args.workdir)


if __name__ == "__main__":
    main()
