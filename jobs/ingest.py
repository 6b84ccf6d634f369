"""`ray job submit … -- python jobs/ingest.py demo --mixture demo`: ingest catalog entries in one Ray run
(thin: parse, call the library)."""

import argparse
import sys

from neurobridge.catalog import resolve
from neurobridge.config import get_settings
from neurobridge.ingest.pipeline import ingest_many
from neurobridge.store.mixtures import write_mixture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("refs", nargs="+", help="catalog file stems, entry names or YAML paths")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--mixture", default=None, help="record the dataset versions as this named mixture")
    parser.add_argument("--max-retries", type=int, default=3, help="attempts after an item's worker process dies")
    args = parser.parse_args()
    settings = get_settings()
    entries = [e for ref in args.refs for e in resolve(ref)]
    failed, reports = 0, []
    for entry, report in zip(
        entries, ingest_many(entries, settings, workers=args.workers, max_retries=args.max_retries), strict=True
    ):
        if isinstance(report, Exception):
            print(f"{entry.name}: {report}", file=sys.stderr)
            failed += 1
            continue
        reports.append(report)
        print(f"{report.dataset} @ {report.version} ({report.card.status}): {report.card.counts} → {report.path}")
        for f in report.failed:
            print(f"  failed {f.rel}: {f.error}", file=sys.stderr)
        failed += len(report.failed)
    if args.mixture and reports:
        write_mixture(settings, args.mixture, reports)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
