"""Run an exported model with ONNX Runtime or Paddle Inference: the line PC's command (the same
as ``orthoad-infer`` from the installed runtime, ``orthoad_runtime/infer_cli.py``). On an ONNX
export it imports neither Paddle nor the repository's fitting code.

    python infer.py --model_file export/brick --input_file IMAGE_OR_FOLDER
"""
import sys

from orthoad_runtime.infer_cli import get_args, main  # noqa: F401  (tests call them)
from orthoad_runtime.util import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
