"""Anomaly map, mask, regions, score and verdict for one image or a folder of images, from a
fitted model file on any engine (the same ``orthoad_runtime.detector.Detector`` as infer.py and
serve.py).

    python predict.py demo_data/brick/test/scratch/000.png --category brick
"""
import logging
import os
import sys

from utils import ArgumentParser, run_cli  # first: quiets Paddle's import
import cli  # noqa: E402
from orthoad_runtime.transforms import list_inputs  # noqa: E402
from orthoad_runtime.batch import input_folder_name, predict_files  # noqa: E402
from orthoad_runtime.prediction_args import add_prediction_args  # noqa: E402

logger = logging.getLogger("predict")


def get_args(argv=None):
    p = ArgumentParser(description="Score one image or every image of a folder with a fitted "
                                   "model; write a figure per image and, for a folder, a CSV.")
    p.add_argument("input", type=str, help="an image file or a folder of images")
    p.add_argument("--category", type=str, default=None,
                   help="category whose model to use (<save_path>/<method>_<arch>_k<k>/<category>"
                        ".safetensors)")
    cli.add_model_args(p, fitting=False)
    cli.add_run_args(p)
    cli.add_precision_args(p, fitting=False)
    p.add_argument("--model_path", type=str, default=None, help="a model file (instead of "
                   "--category)")
    add_prediction_args(p)
    p.add_argument("--output", type=str, default=None,
                   help="output folder (default: <model folder>/predict/<model file name>)")
    return p.parse_args(argv)


def main(args):
    """Predict every input image; return a list of dicts (path, score, verdict, picture)."""
    cli.check_common(args)
    files = list_inputs(args.input)
    detector, path = cli.open_detector(args)
    if args.threshold is not None:
        detector.with_threshold(args.threshold)
    detector.max_pixels = args.max_pixels
    name = os.path.splitext(os.path.basename(path))[0]    # the file's name, not its contents
    out_dir = args.output or os.path.join(os.path.dirname(os.path.abspath(path)), "predict",
                                          name)
    return predict_files(detector, files, out_dir, name, input_folder_name(args.input),
                         os.path.isdir(args.input) or len(files) > 1, args.save_pic,
                         args.save_outputs, args.save_server_maps, args.ignore_mask, args.batch_size)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
