"""Run an exported model with Paddle Inference or ONNX Runtime (no import of models/: the graph
is complete).

    python infer.py --model_file output/export/brick/model.json \
        --params_file output/export/brick/model.pdiparams --input_file IMAGE_OR_FOLDER
    python infer.py --model_file output/export_onnx/brick/model.onnx --input_file IMAGE_OR_FOLDER

Pre-processing, thresholds and the display range come from deploy.json (--stats), written by
export_model.py, so they cannot drift from training; the SHA-256 of every graph file must match
it.
"""
import json
import logging
import os
import resource
import sys
import time

import numpy as np

from utils import ArgumentParser, UserError, positive_int, run_cli, sha256_file  # first
from datasets.transforms import Preprocess, list_inputs, load_rgb  # noqa: E402
from modelfile import is_pickle  # noqa: E402
from outputs import PredictionWriter, apply_ignore, combine, load_ignore_mask  # noqa: E402
from pipeline.engines import (OnnxRuntimeGraph, PaddleInferenceGraph,  # noqa: E402
                              map_and_score)
from schema import check_deploy, decode_mask  # noqa: E402

MAX_DEPLOY_BYTES = 64 << 20

logger = logging.getLogger("infer")


def get_args(argv=None):
    p = ArgumentParser(description="Paddle Inference or ONNX Runtime on an exported OrthoAD / "
                                   "PaDiM model.")
    p.add_argument("--model_file", type=str, required=True,
                   help="model.json or model.pdmodel (Paddle Inference), or model.onnx (ONNX "
                        "Runtime)")
    p.add_argument("--params_file", type=str, default=None,
                   help="model.pdiparams of a Paddle graph (default: beside --model_file); an "
                        "ONNX model takes none")
    p.add_argument("--input_file", type=str, required=True, help="an image or a folder of images")
    p.add_argument("--stats", type=str, default=None,
                   help="deploy.json written by export_model.py (default: next to --model_file)")
    p.add_argument("--category", type=str, default=None,
                   help="if given, must equal the exported model's category")
    p.add_argument("--save_path", type=str, default="./output/infer",
                   help="folder for figures and predictions.csv")
    p.add_bool("--use_gpu", False, "run on GPU 0")
    p.add_argument("--batch_size", type=positive_int, default=1, help="images per run")
    p.add_argument("--cpu_threads", type=positive_int, default=2, help="CPU math threads")
    p.add_bool("--enable_mkldnn", True, "Paddle Inference: oneDNN kernels on CPU (faster than "
               "Paddle's own; see README); ONNX Runtime ignores it")
    p.add_argument("--precision", type=str, default="fp32", choices=["fp32"],
                   help="fp32 only: the per-patch precision matrices need float32 (kept for "
                        "TIPC's --precision flag)")
    p.add_argument("--threshold", type=float, default=None,
                   help="override deploy.json's image and pixel thresholds")
    p.add_bool("--save_pic", True, "write a figure per image (image, heat map, predicted mask)")
    p.add_bool("--save_outputs", True, "write the machine-readable outputs per image: the binary "
               "mask at the original resolution (masks/<stem>.png) and the defect regions "
               "(regions/<stem>.json: box, area, peak and mean score)")
    p.add_argument("--ignore_mask", type=str, default=None,
                   help="PNG of pixels never to score (white = ignore), added to deploy.json's")
    p.add_bool("--enable_benchmark", False,
               "print pre-process / inference / post-process times and peak RSS")
    return p.parse_args(argv)


def _is_onnx(path):
    return path.lower().endswith(".onnx")


def read_deploy(args):
    """Check the files and read deploy.json; verify that every graph file belongs to it."""
    if not os.path.isfile(args.model_file):
        raise UserError(f"--model_file '{args.model_file}' does not exist: run export_model.py "
                        "first")
    folder = os.path.dirname(os.path.abspath(args.model_file))
    params = args.params_file or (None if _is_onnx(args.model_file) else
                                  os.path.join(folder, "model.pdiparams"))
    if params and not os.path.isfile(params):
        raise UserError(f"--params_file '{params}' does not exist: run export_model.py first")
    stats = args.stats or os.path.join(folder, "deploy.json")
    if os.path.isdir(stats):
        stats = os.path.join(stats, "deploy.json")
    if not os.path.isfile(stats):
        raise UserError(f"deploy file '{stats}' does not exist: pass --stats with the "
                        "deploy.json that export_model.py wrote")
    for flag, path in (("--model_file", args.model_file), ("--params_file", params),
                       ("--stats", stats)):
        if path and is_pickle(path):
            raise UserError(f"{flag} '{path}' is a Python pickle, which could run code when "
                            "loaded: pass the files that export_model.py writes")
    if os.path.getsize(stats) > MAX_DEPLOY_BYTES:
        raise UserError(f"'{stats}' is {os.path.getsize(stats)} bytes, far more than a "
                        "deploy.json of export_model.py: pass the deploy.json of the export")
    try:
        with open(stats, encoding="utf-8") as fh:
            deploy = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"'{stats}' is not a deploy.json of export_model.py "
                        f"({type(exc).__name__}): export the model again") from None
    check_deploy(stats, deploy)
    if _is_onnx(args.model_file) != (deploy["format"] == "onnx"):
        raise UserError(f"'{stats}' describes a {deploy['format']} export, not "
                        f"'{args.model_file}': pass the deploy.json exported with it")
    if _is_onnx(args.model_file):
        if params:
            raise UserError(f"an ONNX model takes no --params_file, and '{params}' belongs to "
                            "another export: leave --params_file out")
        checks = [(args.model_file, deploy["graph_sha256"])]
        if deploy.get("data_file"):          # a plain file name beside the graph (schema)
            checks.append((os.path.join(folder, deploy["data_file"]), deploy["data_sha256"]))
    else:
        checks = [(args.model_file, deploy["graph_sha256"]),
                  (params, deploy["params_sha256"])]
    for path, digest in checks:                        # every file the engine will load
        if not os.path.isfile(path) or sha256_file(path) != digest:
            raise UserError(f"'{stats}' does not belong to '{path}' (SHA-256 differs): use the "
                            "deploy.json exported with these files")
    if args.category and args.category != deploy["model"].get("category"):
        raise UserError(f"the exported model is for category '{deploy['model'].get('category')}'"
                        f", not '{args.category}': pass the matching model")
    deploy["_params_file"] = params
    return deploy


def make_runner(args, deploy):
    """The compiled graph of the export: ONNX Runtime for model.onnx, else Paddle Inference."""
    if _is_onnx(args.model_file):
        return OnnxRuntimeGraph(args.model_file, args.cpu_threads, args.use_gpu)
    return PaddleInferenceGraph(args.model_file, deploy["_params_file"], args.cpu_threads,
                                args.enable_mkldnn, args.use_gpu)


def main(args):
    """Infer every input image; return a list of dicts (path, score, verdict, regions, map)."""
    import visualize
    deploy = read_deploy(args)
    files = list_inputs(args.input_file)
    pre = Preprocess.from_config(deploy["preprocess"])
    threshold, pixel_threshold = visualize.thresholds(deploy)
    if args.threshold is not None:
        threshold = pixel_threshold = args.threshold
    ignore = combine(decode_mask(deploy["ignore_mask"]) if deploy.get("ignore_mask") else None,
                     load_ignore_mask(args.ignore_mask, pre) if args.ignore_mask else None)
    runner = make_runner(args, deploy)
    writer = PredictionWriter(args.save_path, pre, (threshold, pixel_threshold), deploy, ignore,
                              args.save_pic, args.save_outputs, files=files,
                              table=os.path.isdir(args.input_file) or len(files) > 1)
    t_pre = t_inf = t_post = 0.0
    for start in range(0, len(files), args.batch_size):
        batch = files[start:start + args.batch_size]
        t0 = time.perf_counter()
        rgbs = [load_rgb(f) for f in batch]
        for f, rgb in zip(batch, rgbs):
            msg = pre.aspect_warning(rgb.shape[:2])
            if msg:
                logger.warning("%s: %s", f, msg)
        x = np.stack([pre.image(rgb) for rgb in rgbs])
        t1 = time.perf_counter()
        maps, _ = map_and_score(runner.run({"image": x}))
        maps, scores = apply_ignore(maps, ignore)
        t2 = time.perf_counter()
        for f, rgb, xi, amap, score in zip(batch, rgbs, x, maps, scores):
            writer.add(f, xi, rgb.shape[:2], amap, float(score))
        t_post += time.perf_counter() - t2
        t_pre += t1 - t0
        t_inf += t2 - t1
    writer.finish()
    if args.enable_benchmark:
        n = len(files)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"benchmark: {n} images, batch {args.batch_size}, "
              f"{'ONNX Runtime' if _is_onnx(args.model_file) else 'Paddle Inference'} "
              f"{'GPU' if args.use_gpu else f'CPU {args.cpu_threads} threads'}: "
              f"preprocess {1000 * t_pre / n:.1f} ms/img, inference {1000 * t_inf / n:.1f} ms/img, "
              f"postprocess {1000 * t_post / n:.1f} ms/img, "
              f"{n / (t_pre + t_inf + t_post):.2f} img/s, peak RSS {rss:.0f} MiB")
    return writer.rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
