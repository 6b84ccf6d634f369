"""`ray job submit … -- python jobs/ingest.py demo`: ingest catalog entries (thin: parse, call the library)."""

import argparse
import sys

from neurobridge.catalog import resolve
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("refs", nargs="+", help="catalog file stems, entry names or YAML paths")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    settings = get_settings()
    failed = 0
    for entry in (e for ref in args.refs for e in resolve(ref)):
        report = ingest(entry, settings, workers=args.workers)
        print(f"{report.dataset} @ {report.version}: {report.card['counts']} → {report.path}")
        for f in report.failed:
            print(f"  failed {f['rel']}: {f['error']}", file=sys.stderr)
        failed += len(report.failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
