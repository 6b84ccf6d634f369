"""`ray job submit … -- python jobs/embed_images.py jobs/embed_things.yaml`: CLIP image embeddings into the store
(thin: parse the config, call the library)."""

import argparse
import sys

from neurobridge.align.config import EmbedConfig
from neurobridge.align.embed_images import embed_images
from neurobridge.config import get_settings, load_yaml, parse_job_args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="YAML EmbedConfig (name, images, model, …)")
    args, overrides = parse_job_args(parser)
    report = embed_images(load_yaml(EmbedConfig, args.config, overrides), get_settings())
    c = report.card["counts"]
    print(f"{report.name}: {c['embedded']} of {c['listed']} images embedded, {c['failed']} failed → {report.path}")
    for f in report.failed:
        print(f"  failed {f['path']}: {f['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
