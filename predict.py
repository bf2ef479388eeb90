"""Anomaly map, mask, score and verdict for one image or a folder of images (dygraph).

    python predict.py demo_data/brick/test/scratch/000.png --category brick
"""
import logging
import os
import sys

from utils import (ArgumentParser, UserError, model_path, run_cli, write_csv)  # first: quiets Paddle's import
import cli  # noqa: E402
import visualize  # noqa: E402
from datasets.transforms import list_inputs, load_rgb  # noqa: E402
from pipeline import model as models_io  # noqa: E402
from pipeline.evaluate import predict_batches  # noqa: E402
from pipeline.geometry import AspectWarnings, batch_for  # noqa: E402

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
    p.add_argument("--model_path", type=str, default=None, help="a model file (instead of "
                   "--category)")
    p.add_argument("--threshold", type=float, default=None,
                   help="override the model's image and pixel thresholds (learned from held-out "
                        "normal images, or calibrated)")
    p.add_bool("--save_pic", True, "write a figure per image")
    p.add_argument("--output", type=str, default=None,
                   help="output folder (default: <model folder>/predict/<category>)")
    return p.parse_args(argv)


def main(args):
    """Predict every input image; return a list of dicts (path, score, verdict, picture)."""
    cli.check_common(args)
    if not args.model_path and not args.category:
        raise UserError("say which model to use: --category NAME (with --save_path, --method, "
                        "--arch, --k) or --model_path FILE")
    files = list_inputs(args.input)
    path = args.model_path or model_path(args.save_path, args.method, args.arch, args.k,
                                         args.category)
    expect = None if args.model_path else {"method": args.method, "arch": args.arch, "k": args.k}
    threads = cli.apply_threads(args)
    model = models_io.load(path, expect, args.weights)
    model.use_engine(args.engine, cli.graph_cache(os.path.dirname(os.path.abspath(path))),
                     threads)
    threshold, pixel_threshold = visualize.thresholds(model.meta)
    if args.threshold is not None:
        threshold = pixel_threshold = args.threshold
    if threshold is None:
        logger.warning("the model has no threshold (fitted with --holdout 0): verdicts are "
                       "'unknown'; pass --threshold")
    out_dir = args.output or os.path.join(os.path.dirname(os.path.abspath(path)), "predict",
                                          model.meta["category"])
    pre = model.preprocess
    aspect = AspectWarnings(pre, limit=10)

    def load(f):
        rgb = load_rgb(f)
        return pre.image(rgb), f, rgb.shape[:2]
    results = []
    for batch, maps, scores in predict_batches(model, files, load,
                                               batch_for(args.batch_size, pre.input_hw),
                                               "predict"):
        for (x, f, hw), amap, score in zip(batch, maps, scores):
            aspect.check(f, hw)
            row = {"path": f, "score": float(score),
                   "verdict": visualize.verdict(float(score), threshold)}
            if args.save_pic:
                vmin, vmax = visualize.display_range(model.meta, amap)
                row["picture"] = visualize.save_prediction(out_dir, f, pre.unnormalise(x), amap,
                                                           float(score), threshold, vmin, vmax,
                                                           pixel_threshold)
            row["map"] = amap
            results.append(row)
            print(f"{f}\tscore {row['score']:.4f}\t{row['verdict']}")
    aspect.close(f"the {len(files)} images")
    if len(files) > 1 or os.path.isdir(args.input):
        csv_path = os.path.join(out_dir, "predictions.csv")
        write_csv(csv_path, results, ["path", "score", "verdict"])
        print(f"{len(results)} images; table in {csv_path}")
    if args.save_pic:
        print(f"figures in {out_dir} (threshold {threshold})")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
