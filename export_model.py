"""Export a fitted model as one Paddle static graph (image -> anomaly map, image score).

    python export_model.py --model_path output/ortho_resnet18_k100/brick.safetensors --save_dir output/export/brick

Writes the whole scoring graph (backbone, projection, Gaussian, upsampling and blur): with
--format paddle (default) model.json (or model.pdmodel with the legacy IR) + model.pdiparams, with
--format onnx model.onnx (+ model.onnx.data above protobuf's 2 GB); and deploy.json
(pre-processing, thresholds, display range, metadata, SHA-256 of the graph files) that infer.py
reads.
"""
import logging
import sys

from utils import ArgumentParser, run_cli  # first: quiets Paddle
import cli  # noqa: E402
from orthoad_runtime.engines import require  # noqa: E402
from pipeline.export import FORMATS, export  # noqa: E402

logger = logging.getLogger("export")


def get_args(argv=None):
    p = ArgumentParser(description="Export a fitted model to a Paddle Inference static graph.")
    p.add_argument("--model_path", type=str, default=None, help="the fitted model file")
    p.add_argument("--category", type=str, default=None,
                   help="instead of --model_path: the category under --save_path")
    cli.add_model_args(p, fitting=False)
    cli.add_precision_args(p, fitting=False)
    p.add_argument("--save_dir", type=str, default="./output/export",
                   help="folder for the graph files and deploy.json")
    p.add_argument("--format", type=str, default="paddle", choices=list(FORMATS),
                   help="paddle: model.json + model.pdiparams (Paddle Inference); onnx: "
                        "model.onnx (+ model.onnx.data above 2 GB), for ONNX Runtime")
    return p.parse_args(argv)


def main(args):
    if args.format == "onnx":
        require("onnxruntime")
    model, _ = cli.open_model(args, "export")
    written = export(model, args.save_dir, args.format)
    print("exported " + ", ".join(written))
    return written


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
