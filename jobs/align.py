"""`ray job submit … -- python jobs/align.py --config jobs/configs/align_demo.yaml [--set key=value …]`:
neural → image alignment on Ray Train (thin: parse, call the library)."""

import argparse
import sys

from neurobridge.align.config import AlignConfig
from neurobridge.align.experiment import run_alignment
from neurobridge.config import load_yaml, parse_job_args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML alignment config")
    args, overrides = parse_job_args(parser)
    result = run_alignment(load_yaml(AlignConfig, args.config, overrides), echo=print)
    for name, s in result.summary().items():
        print(
            f"{name}: top-1 {s['image_top1']:.3f} (chance {s['image_chance1']:.3f}), top-5 {s['image_top5']:.3f} "
            f"(chance {s['image_chance5']:.3f}), {s['tokens_per_s']:,.0f} tokens/s"
        )
    print(f"MLflow run {result.run_id} (model/: weights + align_model.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
