"""A warm inspection service: every model of a run folder or a folder of exports behind HTTP
(``orthoad_runtime.serve_cli``; run folders of model files need Paddle, so they are served from
the repository, exports also by the installed ``orthoad-serve``).

    python serve.py --model_dir output/ortho_resnet18_k100 --port 8000
    curl -s --data-binary @part.png -H "Content-Type: image/png" \
        "http://127.0.0.1:8000/predict?category=brick"

See docs/serving.md for the endpoints, limits, keys, workers and replicas.
"""
import sys

from utils import run_cli  # first: configures the process for Paddle
from orthoad_runtime import serve_cli  # noqa: E402

FACTORY = "pipeline.serving:app_from_environment"   # model files and exports


def get_args(argv=None):
    return serve_cli.get_args(argv, model_files=True)


def main(args):
    return serve_cli.main(args, FACTORY)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
