"""`python jobs/pipeline.py --config jobs/pipelines/demo.yaml`: the stages a pipeline config lists, in order
(simulate, ingest; pretrain/align/register as they land). Thin: parse, call the library. On a cluster:

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \\
        -- python jobs/pipeline.py --config jobs/pipelines/aws.yaml

Exit status: 0 all stages ok; 1 a stage failed (its reasons are the last lines of the log); 2 a bad config, or
locations that would be lost with the Ray session (no NB_STORE / NB_MLFLOW_URI on the cluster).
"""

import argparse
import os
import sys

from neurobridge import __version__
from neurobridge.config import SettingsError
from neurobridge.workflows.pipeline import PipelineError, load_pipeline, origin, run_pipeline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/pipelines/demo.yaml", help="pipeline YAML: a path or any fsspec URI")
    parser.add_argument("--stages", default=None, help="comma-separated stages to run instead of the config's list")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a job log is no terminal: no bars
    print(f"neurobridge {__version__} from {origin()}", flush=True)
    try:  # a bad config, or locations that would vanish with the Ray session: before any stage
        cfg = load_pipeline(args.config, args.stages.split(",") if args.stages else None)
        return run_pipeline(cfg, echo=lambda line: print(line, flush=True))
    except (PipelineError, SettingsError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
