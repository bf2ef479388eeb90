"""Run an exported model with ONNX Runtime or Paddle Inference: the line PC's command
(``orthoad-infer`` once installed; the repository's infer.py runs it too). On an ONNX export it
imports no Paddle.

    orthoad-infer --model_file export/brick --input_file IMAGE_OR_FOLDER
    orthoad-infer --model_file export/brick/model.json --params_file export/brick/model.pdiparams \
        --input_file IMAGE_OR_FOLDER

Pre-processing, thresholds and the display range come from deploy.json (--stats), written by
export_model.py, so they cannot drift from training; the SHA-256 of every graph file must match
it. The same ``Detector`` as predict.py and the service does the work.
"""
import logging
import os
import resource
import time

from .batch import input_folder_name, predict_files
from .detector import Detector
from .errors import UserError
from .prediction_args import add_prediction_args, check_precision
from .transforms import list_inputs
from .util import ArgumentParser, positive_int, run_cli

logger = logging.getLogger("infer")
ENGINE_NAMES = {"onnxruntime": "ONNX Runtime", "onnxruntime int8": "ONNX Runtime int8",
                "inference": "Paddle Inference"}


def get_args(argv=None):
    p = ArgumentParser(description="ONNX Runtime or Paddle Inference on an exported OrthoAD / "
                                   "PaDiM / PatchCore model.")
    p.add_argument("--model_file", type=str, required=True,
                   help="model.onnx (ONNX Runtime), or model.json / model.pdmodel (Paddle "
                        "Inference); or the export folder")
    p.add_argument("--params_file", type=str, default=None,
                   help="model.pdiparams of a Paddle graph (default: beside --model_file); an "
                        "ONNX model takes none")
    p.add_argument("--input_file", type=str, required=True, help="an image or a folder of images")
    p.add_argument("--stats", type=str, default=None,
                   help="deploy.json written by export_model.py (default: next to --model_file)")
    p.add_argument("--category", type=str, default=None,
                   help="if given, must equal the exported model's category")
    p.add_argument("--save_path", type=str, default="./output/infer",
                   help="folder for figures, masks, regions and predictions.csv")
    p.add_bool("--use_gpu", False, "run on GPU 0")
    p.add_argument("--batch_size", type=positive_int, default=1, help="images per run")
    p.add_argument("--cpu_threads", type=positive_int, default=2, help="CPU math threads")
    p.add_bool("--enable_mkldnn", True, "Paddle Inference: oneDNN kernels on CPU (faster than "
               "Paddle's own; see docs/performance.md); ONNX Runtime ignores it")
    p.add_argument("--precision", type=str, default="auto", choices=["auto", "fp32", "int8"],
                   help="the export's own (auto), or fp32 / int8, which must be the export's "
                        "(export an int8 model with export_model.py --format onnx --precision "
                        "int8); the Gaussian and the map head are float32 either way")
    add_prediction_args(p)
    p.add_bool("--enable_benchmark", False,
               "print pre-process / inference / post-process times and peak RSS")
    p.add_not_needed(("--weights", "--pretrained", "--no-pretrained"),
                     "an export holds its backbone's weights")
    return p.parse_args(argv)


def main(args):
    """Infer every input image; return a list of dicts (path, score, verdict, regions, map)."""
    for flag, path in (("--model_file", args.model_file), ("--params_file", args.params_file),
                       ("--stats", args.stats)):
        if path and not os.path.exists(path):
            raise UserError(f"{flag} '{path}' does not exist: run export_model.py first, or "
                            "give the files it wrote")
    files = list_inputs(args.input_file)
    detector = Detector.from_export(
        args.model_file, threads=args.cpu_threads, use_gpu=args.use_gpu,
        mkldnn=args.enable_mkldnn if "enable_mkldnn" in args.explicit else None,
        params_file=args.params_file, deploy_file=args.stats, max_pixels=args.max_pixels)
    check_precision(args.precision, detector.precision, f"the export '{args.model_file}'")
    if args.category and args.category != detector.category:
        raise UserError(f"the exported model is for category '{detector.category}', not "
                        f"'{args.category}': pass the matching model")
    if args.threshold is not None:
        detector.with_threshold(args.threshold)
    name = os.path.basename(os.path.dirname(os.path.abspath(args.model_file))) \
        if not os.path.isdir(args.model_file) else os.path.basename(
            os.path.normpath(args.model_file))       # the export folder's name
    start = time.perf_counter()
    rows = predict_files(detector, files, args.save_path, name,
                         input_folder_name(args.input_file),
                         os.path.isdir(args.input_file) or len(files) > 1, args.save_pic,
                         args.save_outputs, args.save_server_maps, args.ignore_mask, args.batch_size)
    if args.enable_benchmark:
        total = time.perf_counter() - start
        t, n = detector.timings, len(files)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        post = total - t["prepare_s"] - t["score_s"]
        print(f"benchmark: {n} images, batch {args.batch_size}, "
              f"{ENGINE_NAMES.get(detector.engine, detector.engine)} "
              f"{'GPU' if args.use_gpu else f'CPU {args.cpu_threads} threads'}: "
              f"preprocess {1000 * t['prepare_s'] / n:.1f} ms/img, inference "
              f"{1000 * t['score_s'] / n:.1f} ms/img, postprocess {1000 * post / n:.1f} ms/img, "
              f"{n / total:.2f} img/s, peak RSS {rss:.0f} MiB")
    return rows


def entry():
    """The ``orthoad-infer`` console script."""
    return run_cli(main, get_args)
